// Starts the real mock provider and the real gateway with its console on, for the browser
// tests: free loopback ports, a temporary directory, operators made through the admin API.
// The binaries come from TOLLGATE_BIN and TOLLGATE_LOADTEST_BIN (tests/run-all sets them).
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { adminClient, binary, start } from "../sdk-ts/stack.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const ADMIN_TOKEN = "browser-admin-token-0123456789";

export async function startStack() {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-browser-"));
  const mock = await start(binary("TOLLGATE_LOADTEST_BIN"), ["mock", "--listen", "127.0.0.1:0"], {
    ...process.env,
    MOCK_PROVIDER_KEY: "sk-provider-browser",
  });
  copyFileSync(join(ROOT, "gateway/config/rates.example.toml"), join(dir, "rates.toml"));
  writeFileSync(
    join(dir, "tollgate.toml"),
    `rate_card = "rates.toml"
[server]
listen = "127.0.0.1:0"
[parquet]
roll_interval_ms = 200
[console]
enabled = true
secure_cookie = "never"
[[provider]]
name = "openai"
kind = "openai"
base_url = "http://${mock.address}/v1"
api_key_env = "BROWSER_PROVIDER_KEY"
[[provider]]
name = "anthropic"
kind = "anthropic"
base_url = "http://${mock.address}"
api_key_env = "BROWSER_PROVIDER_KEY"
[[team]]
name = "research"
budget = { limit = "5.00", period = "month" }
[[project]]
name = "chatbot"
team = "research"
[[allocation]]
name = "open"
project = "chatbot"
budget = { limit = "2.00", period = "month" }
[[team]]
name = "support"
[[project]]
name = "helpdesk"
team = "support"
[[allocation]]
name = "tickets"
project = "helpdesk"
`,
  );
  const gateway = await start(binary("TOLLGATE_BIN"), ["serve", "--config", join(dir, "tollgate.toml")], {
    ...process.env,
    BROWSER_PROVIDER_KEY: "sk-provider-browser",
    TOLLGATE_ADMIN_TOKEN: ADMIN_TOKEN,
  });
  const url = `http://${gateway.address}`;
  const admin = adminClient(url, ADMIN_TOKEN);
  const call = async (key, model = "openai/gpt-4o-mini") => {
    const answer = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model, max_tokens: 20, messages: [{ role: "user", content: "hello there" }] }),
    });
    await answer.arrayBuffer();
    return answer.status;
  };
  return {
    url,
    dir,
    admin,
    call,
    key: async (allocation, fields = {}) =>
      (await admin("POST", "/admin/v1/keys", { allocation, user: "browser", ...fields })).key,
    operator: async (name, role, team) =>
      (await admin("POST", "/admin/v1/operators", { name, role, team })).secret,
    // `tollgate report` on the gateway's data folder, as JSON.
    report: (...args) =>
      JSON.parse(execFileSync(binary("TOLLGATE_BIN"), ["report", "--data", join(dir, "data"), "--format", "json", ...args]).toString()),
    cli: (...args) => execFileSync(binary("TOLLGATE_BIN"), ["report", "--data", join(dir, "data"), ...args]).toString(),
    stop: async () => {
      const exited = new Promise((resolve) => gateway.child.on("exit", resolve));
      gateway.child.kill("SIGTERM");
      await exited;
      mock.child.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
