// The console in a real browser (Debian's Chromium, headless, driven by playwright-core):
// signing in as each role, the overview's totals against `tollgate report`, a key created,
// its secret shown once, revoked and refused, the live tail, every page at 1280 and 390 px
// with a screenshot of each, the keyboard, and hostile input: a bad cookie, a replayed CSRF
// token, a page of another site, and a script in a key's user name.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { ADMIN_TOKEN, startStack } from "./stack.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = process.env.TOLLGATE_BROWSER_ARTIFACTS || join(HERE, "artifacts");
const CHROMIUM = process.env.TOLLGATE_CHROMIUM || "/usr/bin/chromium";
const HOSTILE = `<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">`;

let stack;
let browser;
let operators;
let researchKey;

function monthStart() {
  const now = new Date();
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString().replace(".000Z", "Z");
}

async function until(what, check, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

before(async () => {
  if (!existsSync(CHROMIUM)) {
    assert.notEqual(process.env.CI, "true", `CI=true: ${CHROMIUM} must exist (tests/run-all installs Debian's chromium)`);
    console.error(`\n*** SKIPPED the browser tests: no ${CHROMIUM}; run tests/run-all ***\n`);
    return;
  }
  mkdirSync(ARTIFACTS, { recursive: true });
  stack = await startStack();
  operators = {
    viewer: await stack.operator("finance", "viewer"),
    research: await stack.operator("ada", "team-admin", "research"),
    support: await stack.operator("bob", "team-admin", "support"),
  };
  researchKey = await stack.key("open", { agent: "coder-1" });
  const supportKey = await stack.key("tickets", { user: HOSTILE, agent: HOSTILE });
  for (const [key, model] of [[researchKey, "openai/gpt-4o-mini"], [researchKey, "openai/gpt-4o"],
    [supportKey, "anthropic/claude-sonnet-4-5"], [researchKey, "openai/gpt-4o-mini"]]) {
    assert.equal(await stack.call(key, model), 200);
  }
  await until("the usage files", async () =>
    (await stack.admin("GET", "/admin/v1/report?by=team")).total.events === 4);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

/** A new browser (its own cookies) at `width`, with every dialog but a confirm a failure. */
async function open(width = 1280) {
  const context = await browser.newContext({ viewport: { width, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  page.alerts = [];
  page.on("dialog", async (dialog) => {
    if (dialog.type() === "confirm") await dialog.accept();
    else {
      page.alerts.push(dialog.message());
      await dialog.dismiss();
    }
  });
  page.problems = [];
  page.on("pageerror", (error) => page.problems.push(String(error)));
  return { context, page };
}

async function signIn(page, secret) {
  await page.goto(`${stack.url}/console`);
  await page.getByLabel("Admin token or operator secret").fill(secret);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Overview", level: 1 }).waitFor();
}

async function go(page, name, heading = name) {
  await page.getByRole("navigation", { name: "Console pages" }).getByRole("link", { name }).click();
  await page.getByRole("heading", { name: heading, level: 1 }).waitFor();
}

async function shot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** Calls the admin API from the page, as its own script does (cookie, CSRF header). */
function fetchFromPage(page, method, path, body, csrf) {
  return page.evaluate(async ({ method, path, body, csrf }) => {
    const session = await (await fetch("/console/session")).json();
    const headers = { "content-type": "application/json" };
    if (csrf !== null) headers[session.csrf_header] = csrf ?? session.csrf;
    const answer = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: answer.status, body: await answer.text() };
  }, { method, path, body, csrf });
}

test("an admin sees the report's totals, makes a key, sees its secret once and revokes it", { skip: !existsSync(CHROMIUM) }, async () => {
  const { context, page } = await open();
  await signIn(page, ADMIN_TOKEN);
  const from = monthStart();
  const printed = stack.report("--by", "team", "--from", from);
  const total = await page.locator("#period-total").getAttribute("data-nanos");
  assert.equal(total, printed.total.cost_nanos, "the overview's total is the report's, to the unit");
  assert.match(await page.locator("#period-total").textContent(), new RegExp(`^${printed.total.cost.replace(".", "\\.")} `));
  for (const row of printed.rows) {
    const cells = page.getByRole("region", { name: /^Spend against limits by team/ })
      .getByRole("row", { name: new RegExp(`^${row.team} `) });
    assert.match(await cells.textContent(), new RegExp(row.cost.replace(".", "\\.")), `team ${row.team}`);
  }
  await page.locator(".chart canvas").first().waitFor();
  await shot(page, "overview-admin-1280");

  await go(page, "Keys");
  await page.getByLabel("User").fill("made-in-browser");
  await page.getByLabel("Allocation").selectOption("open");
  await page.getByRole("button", { name: "Create key" }).click();
  const secret = await page.locator("#secret-value").textContent();
  assert.match(secret, /^tg_/);
  await shot(page, "keys-secret-shown");
  assert.equal(await stack.call(secret), 200, "the new key works");
  await page.reload();
  await page.getByRole("heading", { name: "Keys", level: 1 }).waitFor();
  assert.equal(await page.locator("#secret-value").count(), 0, "the secret is shown once");
  assert.ok(!(await page.content()).includes(secret), "and never again");
  // Rotating: a new secret shown once, the old key refused, the new one working.
  const row = page.getByRole("row", { name: /made-in-browser/ }).filter({ hasText: "active" });
  await row.getByRole("button", { name: /^Rotate key/ }).click();
  await page.getByText(/Copy its secret now/).waitFor();
  const rotated = await page.locator("#secret-value").textContent();
  assert.notEqual(rotated, secret);
  assert.equal(await stack.call(secret), 401, "the rotated-out key is refused");
  assert.equal(await stack.call(rotated), 200, "its replacement works");
  const current = page.getByRole("row", { name: /made-in-browser/ }).filter({ hasText: "active" });
  await current.getByRole("button", { name: /^Revoke key/ }).click();
  await page.getByRole("row", { name: /made-in-browser/ }).filter({ hasText: "active" }).waitFor({ state: "detached" });
  assert.equal(await stack.call(rotated), 401, "the revoked key is refused");
  assert.deepEqual(page.problems, []);
  await context.close();
});

test("the live tail shows a call made while it is open", { skip: !existsSync(CHROMIUM) }, async () => {
  const { context, page } = await open();
  await signIn(page, operators.viewer);
  await go(page, "Live tail");
  const tailKey = await stack.key("open", { user: "tail-watcher" });
  assert.equal(await stack.call(tailKey), 200);
  await page.locator("#tail").getByRole("row", { name: /tail-watcher/ }).waitFor({ timeout: 15_000 });
  await shot(page, "tail");
  await context.close();
});

test("every page reads at 1280 and 390 pixels, with a label on every control", { skip: !existsSync(CHROMIUM) }, async () => {
  for (const width of [1280, 390]) {
    const { context, page } = await open(width);
    await signIn(page, ADMIN_TOKEN);
    for (const [name, heading] of [["Overview"], ["Allocations"], ["Keys"], ["Live tail"], ["Rate card"], ["Exports"]]) {
      await go(page, name, heading);
      await page.waitForLoadState("networkidle");
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `${name} at ${width} px is ${overflow} px too wide`);
      const unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, select, button")]
        .filter((el) => !(el.labels?.length || el.getAttribute("aria-label") || el.textContent.trim()))
        .map((el) => el.outerHTML));
      assert.deepEqual(unlabelled, [], `${name}: every control has a name`);
      if (name === "Rate card") {
        // The prices in force, as the admin API states them.
        const models = await stack.admin("GET", "/admin/v1/models");
        const priced = models.models.find((m) => m.model === "openai/gpt-4o-mini");
        const cells = page.getByRole("region", { name: "Prices in force" }).getByRole("row", { name: /^openai\/gpt-4o-mini / });
        assert.match(await cells.textContent(), new RegExp(priced.input_per_mtok.replace(".", "\\.")));
      }
      await shot(page, `${name.toLowerCase().replace(/ /g, "-")}-${width}`);
    }
    await page.getByRole("navigation", { name: "Console pages" }).getByRole("link", { name: "Allocations" }).click();
    await page.getByRole("link", { name: "open", exact: true }).click();
    await page.getByRole("heading", { name: "Allocation open", level: 1 }).waitFor();
    await page.locator(".chart canvas").first().waitFor();
    await page.getByLabel("Group by").selectOption("agent");
    await page.getByRole("region", { name: /^Spend of open by agent/ }).getByRole("row", { name: /coder-1/ }).waitFor();
    await shot(page, `allocation-${width}`);
    assert.deepEqual(page.problems, []);
    await context.close();
  }
});

test("the console works from the keyboard alone", { skip: !existsSync(CHROMIUM) }, async () => {
  const { context, page } = await open();
  await page.goto(`${stack.url}/console`);
  await page.getByLabel("Admin token or operator secret").waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.id), "secret", "the secret field has focus");
  await page.keyboard.type(operators.viewer);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Overview", level: 1 }).waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.id), "main", "a new page takes the focus");
  // Back from the page's content through the header to the Keys link, and in.
  const focused = () => page.evaluate(() => document.activeElement.textContent.trim());
  for (let i = 0; i < 10 && (await focused()) !== "Keys"; i++) await page.keyboard.press("Shift+Tab");
  assert.equal(await focused(), "Keys");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Keys", level: 1 }).waitFor();
  // The skip link is the first stop of the page, and takes the keyboard past the header.
  await page.reload();
  await page.getByRole("heading", { name: "Keys", level: 1 }).waitFor();
  await page.evaluate(() => document.activeElement.blur());
  await page.locator("body").press("Tab");
  for (let i = 0; i < 20 && (await focused()) !== "Skip to content"; i++) await page.keyboard.press("Shift+Tab");
  assert.equal(await focused(), "Skip to content");
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.activeElement.id), "main");
  await context.close();
});

test("a viewer cannot change anything and a team-admin cannot touch another team", { skip: !existsSync(CHROMIUM) }, async () => {
  const viewer = await open();
  await signIn(viewer.page, operators.viewer);
  await go(viewer.page, "Keys");
  assert.equal(await viewer.page.getByRole("button", { name: "Create key" }).count(), 0);
  assert.equal(await viewer.page.getByRole("button", { name: /^Revoke key/ }).count(), 0);
  const refused = await fetchFromPage(viewer.page, "POST", "/admin/v1/keys", { allocation: "open", user: "v" });
  assert.equal(refused.status, 403, refused.body);
  assert.match(refused.body, /permission_denied/);
  await shot(viewer.page, "keys-viewer");
  await viewer.context.close();

  const ada = await open();
  await signIn(ada.page, operators.research);
  await go(ada.page, "Keys");
  const choices = await ada.page.getByLabel("Allocation").locator("option").allTextContents();
  assert.deepEqual(choices, ["open (research)"]);
  const theirs = await fetchFromPage(ada.page, "POST", "/admin/v1/keys", { allocation: "tickets", user: "a" });
  assert.equal(theirs.status, 403, theirs.body);
  const ours = await fetchFromPage(ada.page, "POST", "/admin/v1/keys", { allocation: "open", user: "a" });
  assert.equal(ours.status, 201, ours.body);
  const supportRow = ada.page.getByRole("row", { name: /tickets/ }).first();
  assert.equal(await supportRow.getByRole("button").count(), 0, "no buttons on another team's keys");
  await ada.context.close();
});

test("hostile input: a bad cookie, a replayed CSRF token, another site's page, a script in a name", { skip: !existsSync(CHROMIUM) }, async () => {
  // A cookie that is no session gets the sign-in page.
  const forged = await open();
  const host = new URL(stack.url);
  await forged.context.addCookies([{ name: "tollgate_session", value: "f".repeat(64), domain: host.hostname, path: "/" }]);
  await forged.page.goto(`${stack.url}/console`);
  await forged.page.getByLabel("Admin token or operator secret").waitFor();
  await forged.context.close();

  // A CSRF token of a session that ended is refused in the next one.
  const { context, page } = await open();
  await signIn(page, ADMIN_TOKEN);
  const old = await page.evaluate(async () => (await (await fetch("/console/session")).json()).csrf);
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Admin token or operator secret").waitFor();
  await signIn(page, ADMIN_TOKEN);
  const replayed = await fetchFromPage(page, "POST", "/admin/v1/keys", { allocation: "open", user: "r" }, old);
  assert.equal(replayed.status, 403, replayed.body);
  assert.match(replayed.body, /csrf_failed/);
  const none = await fetchFromPage(page, "POST", "/admin/v1/keys", { allocation: "open", user: "r" }, null);
  assert.equal(none.status, 403, none.body);

  // A page of another site, with the admin signed in here, makes no key: its requests carry
  // no cookie (SameSite=Strict), and a forged one would be refused (Sec-Fetch-Site, Origin).
  const keysBefore = (await stack.admin("GET", "/admin/v1/keys")).keys.length;
  const evil = createServer((_, response) => {
    response.setHeader("content-type", "text/html");
    response.end(`<!doctype html><form id=f method=post action="${stack.url}/admin/v1/keys" enctype="text/plain">
      <input name='{"allocation":"open","user":"evil","x":"' value='"}'></form>
      <script>
        fetch(${JSON.stringify(stack.url)} + "/admin/v1/keys", { method: "POST", credentials: "include", mode: "no-cors",
          headers: { "content-type": "text/plain" }, body: JSON.stringify({ allocation: "open", user: "evil" }) })
          .finally(() => document.getElementById("f").submit());
      </script>`);
  });
  await new Promise((resolve) => evil.listen(0, "localhost", resolve));
  const evilPage = await context.newPage();
  await evilPage.goto(`http://localhost:${evil.address().port}/`);
  await evilPage.waitForURL(`${stack.url}/admin/v1/keys`);
  assert.match(await evilPage.content(), /invalid_admin_token|csrf_failed/);
  evil.close();
  const keysAfter = (await stack.admin("GET", "/admin/v1/keys")).keys;
  assert.equal(keysAfter.length, keysBefore, "no key was made");
  assert.ok(!keysAfter.some((k) => k.user === "evil"));

  // A script in a key's user and agent is shown as text, on the keys page and in the tail.
  await go(page, "Keys");
  await page.getByText(HOSTILE).first().waitFor();
  await go(page, "Live tail");
  await page.locator("#tail").getByText(HOSTILE).first().waitFor();
  assert.equal(await page.evaluate(() => window.__pwned), undefined, "nothing in a name ran");
  assert.equal(await page.locator("main script, main img").count(), 0, "no element was made of it");
  assert.deepEqual(page.alerts, []);
  await shot(page, "hostile-names");
  await context.close();
});

test("the exports download what the CLI writes", { skip: !existsSync(CHROMIUM) }, async () => {
  const { context, page } = await open();
  await signIn(page, operators.viewer);
  await go(page, "Exports");
  const download = async (name) => {
    const [file] = await Promise.all([page.waitForEvent("download"), page.getByRole("link", { name }).click()]);
    return readFileSync(await file.path());
  };
  const focus = await download("FOCUS statement (CSV)");
  assert.equal(focus.toString(), stack.cli("--from", monthStart(), "--by", "team", "--format", "focus"));
  const chargeback = await download("Chargeback by team (CSV)");
  assert.equal(chargeback.toString(), stack.cli("--from", monthStart(), "--by", "team", "--format", "csv"));
  const parquet = await download("FOCUS statement (Parquet)");
  assert.equal(parquet.subarray(0, 4).toString(), "PAR1");
  assert.equal(parquet.subarray(-4).toString(), "PAR1");
  await context.close();
});
