// Starts the real mock provider and the real gateway for the TypeScript SDK tests, the way
// tests/sdk/conftest.py does for Python: free loopback ports, a temporary directory, keys made
// through the admin API. The binaries come from TOLLGATE_BIN and TOLLGATE_LOADTEST_BIN.
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const ADMIN_TOKEN = "ts-admin-token-0123456789";

/** The path in `variable`, which must name a built binary. */
export function binary(variable) {
  const path = process.env[variable];
  if (!path || !existsSync(path)) throw new Error(`${variable} must name a built binary (tests/run-all sets it)`);
  return path;
}

/** Starts `command` and resolves once it prints the address it listens on. */
export function start(command, args, env) {
  const child = spawn(command, args, { env, stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${command} did not start`)), 60_000);
    let buffered = "";
    child.stdout.on("data", (chunk) => {
      buffered += chunk;
      const match = buffered.match(/listening on http:\/\/(\S+)/);
      if (match) {
        clearTimeout(timer);
        resolve({ child, address: match[1] });
      }
    });
    child.on("exit", (code) => reject(new Error(`${command} exited with ${code}`)));
  });
}

/** Calls the admin API of the gateway at `url` with `token`; a failure throws. */
export function adminClient(url, token) {
  return async (method, path, body) => {
    const answer = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!answer.ok) throw new Error(`${method} ${path}: ${answer.status} ${await answer.text()}`);
    return answer.json();
  };
}

export async function startStack() {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-ts-"));
  const mock = await start(binary("TOLLGATE_LOADTEST_BIN"), ["mock", "--listen", "127.0.0.1:0"], {
    ...process.env,
    MOCK_PROVIDER_KEY: "sk-provider-ts",
  });
  copyFileSync(join(ROOT, "gateway/config/rates.example.toml"), join(dir, "rates.toml"));
  writeFileSync(
    join(dir, "tollgate.toml"),
    `rate_card = "rates.toml"
[server]
listen = "127.0.0.1:0"
[admission]
wait_ms_max = 300
[[provider]]
name = "openai"
kind = "openai"
base_url = "http://${mock.address}/v1"
api_key_env = "TS_PROVIDER_KEY"
[[provider]]
name = "anthropic"
kind = "anthropic"
base_url = "http://${mock.address}"
api_key_env = "TS_PROVIDER_KEY"
[[team]]
name = "research"
[[project]]
name = "chatbot"
team = "research"
[[allocation]]
name = "open"
project = "chatbot"
[[allocation]]
name = "tiny"
project = "chatbot"
budget = { limit = "0.000001", period = "day" }
[[allocation]]
name = "busy"
project = "chatbot"
budget = { limit = "0.02", period = "total" }
[[allocation]]
name = "stop"
project = "chatbot"
budget = { limit = "0.04", period = "total" }
`,
  );
  const gateway = await start(binary("TOLLGATE_BIN"), ["serve", "--config", join(dir, "tollgate.toml")], {
    ...process.env,
    TS_PROVIDER_KEY: "sk-provider-ts",
    TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN,
  });
  const url = `http://${gateway.address}`;
  const admin = adminClient(url, ADMIN_TOKEN);
  return {
    url,
    admin,
    key: async (allocation) => (await admin("POST", "/admin/v1/keys", { allocation, user: "ts" })).key,
    // A slow stream on `allocation` holding its whole room for about `seconds`; resolves at
    // the stream's end.
    holdBudget: async (allocation, seconds) => {
      const key = (await admin("POST", "/admin/v1/keys", { allocation, user: "ts" })).key;
      const answer = await fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: "openai/gpt-4o", max_tokens: 4096, stream: true,
          messages: [{ role: "user", content: "hold" }],
          mock: { answer_tokens: 10, token_ms: Math.round(seconds * 100) },
        }),
      });
      return answer.text();
    },
    stop: async () => {
      const exited = new Promise((resolve) => gateway.child.on("exit", resolve));
      gateway.child.kill("SIGTERM");
      await exited;
      mock.child.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
