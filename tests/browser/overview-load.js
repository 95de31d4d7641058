// Times the console's overview in Chromium: from navigation to the page with its total and
// its burn-down drawn, signed in already, `runs` times; prints one JSON line per run. For
// loadtest/scripts/console-load.sh (the figure in BENCHMARKS.md), not a test.
//
//   node overview-load.js URL SECRET [runs]
import { chromium } from "playwright-core";

const [url, secret, runs = "5"] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.TOLLGATE_CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
await page.goto(`${url}/console`);
await page.getByLabel("Admin token or operator secret").fill(secret);
await page.getByRole("button", { name: "Sign in" }).click();
await page.locator("#period-total").waitFor({ timeout: 300_000 });
for (let run = 0; run < Number(runs); run++) {
  // A whole new page each time (its script and every call again), signed in by the cookie.
  await page.goto("about:blank");
  const started = Date.now();
  await page.goto(`${url}/console#/overview`, { waitUntil: "commit" });
  await page.locator("#period-total").waitFor({ timeout: 300_000 });
  await page.locator(".chart canvas").first().waitFor({ timeout: 300_000 });
  const loaded = Date.now() - started;
  const timings = await page.evaluate(() => performance.getEntriesByType("resource")
    .filter((e) => e.name.includes("/admin/v1/"))
    .map((e) => [new URL(e.name).pathname, Math.round(e.duration)]));
  console.log(JSON.stringify({ run, overview_ms: loaded, calls_ms: Object.fromEntries(timings) }));
}
await browser.close();
