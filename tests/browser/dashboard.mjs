// Drives Debian's Chromium (headless, through playwright-core) against the
// live dashboard of a running `tributary up`.
//
//   node tests/browser/dashboard.mjs check URL SCREENSHOT
//   node tests/browser/dashboard.mjs reconnect URL SCREENSHOT
//   TRIBUTARY_DASHBOARD_TOKEN=… node tests/browser/dashboard.mjs login URL SCREENSHOT
//
// `check` loads the page and checks, in order: it goes live; the highest
// probe number increases within 3 s; the average transit is a number; the
// SMS counters move; the sensor table and the fleet line are filled in; then
// it records update arrival times for 10 s (the cadence) and takes the
// screenshot. No console error may appear at any point.
//
// `reconnect` is driven over stdin/stdout by the test that owns the server:
// once the page is live the script prints {"event":"live"} and waits for a
// "stopped" line; it then waits for the page to say "reconnecting", prints
// {"event":"reconnecting"} and waits for "restarted"; then the page must go
// live again by itself, with its numbers moving, without any navigation.
//
// `login` is for a server that requires a token: the page must say
// "signed-out" and offer a sign-in button; a wrong token is refused on the
// sign-in page; the right one (from TRIBUTARY_DASHBOARD_TOKEN) brings the
// page back live, with its numbers moving, and the cookie it is kept in is
// out of reach of scripts (HttpOnly).
//
// Progress goes to stderr. The last stdout line is one JSON object with the
// figures; on a failed check the script prints the reason to stderr and
// exits 1.

import { mkdtemp, rm, mkdir } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.TRIBUTARY_CHROMIUM || "/usr/bin/chromium";
// Flags for a closed network: no background fetches, no QUIC, no updates.
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const [mode, url, screenshot] = process.argv.slice(2);
if (!["check", "reconnect", "login"].includes(mode) || !url || !screenshot) {
  console.error("usage: node dashboard.mjs check|reconnect|login URL SCREENSHOT");
  process.exit(2);
}
if (!existsSync(CHROMIUM)) {
  console.error(`FAIL: no Chromium at ${CHROMIUM}: run scripts/test.sh, which installs Debian's chromium`);
  process.exit(1);
}

const log = (...args) => console.error("dashboard.mjs:", ...args);
const emit = (object) => process.stdout.write(JSON.stringify(object) + "\n");

class CheckFailed extends Error {}
const fail = (message) => {
  throw new CheckFailed(message);
};

// Polls `probe` every 50 ms until it returns something truthy, or fails
// with `what` after `ms`.
async function waitFor(what, ms, probe) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) fail(`${what} (waited ${ms} ms)`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

// The raw number the page keeps in an element's data-value, or null.
async function valueOf(page, id) {
  return page.evaluate((id) => {
    const raw = document.getElementById(id)?.dataset.value;
    return raw === undefined ? null : Number(raw);
  }, id);
}

const statusOf = (page) => page.evaluate(() => document.getElementById("status").dataset.state);

async function smsHandled(page) {
  const sent = await valueOf(page, "sms-sent");
  const failed = await valueOf(page, "sms-failed");
  return sent === null || failed === null ? null : sent + failed;
}

// Waits until the value of `read` is above `before`; returns [value, ms].
async function increases(what, ms, before, read) {
  const started = Date.now();
  const value = await waitFor(`${what} did not increase from ${before}`, ms, async () => {
    const now = await read();
    return now !== null && now > before ? now : null;
  });
  return [value, Date.now() - started];
}

// Gaps between update arrivals over `ms`, measured in the page.
async function cadence(page, ms) {
  const from = await page.evaluate(() => window.__dashboardUpdates.length);
  await page.waitForTimeout(ms);
  const times = await page.evaluate((from) => window.__dashboardUpdates.slice(from), from);
  const gaps = times.slice(1).map((t, i) => t - times[i]);
  const mean = gaps.length ? gaps.reduce((a, b) => a + b, 0) / gaps.length : null;
  return {
    updates: times.length,
    mean_gap_ms: mean,
    max_gap_ms: gaps.length ? Math.max(...gaps) : null,
    min_gap_ms: gaps.length ? Math.min(...gaps) : null,
  };
}

function readLine(lines) {
  return new Promise((resolve, reject) => {
    lines.once("line", resolve);
    lines.once("close", () => reject(new CheckFailed("stdin closed before the test said what it did")));
  });
}

async function main() {
  const profile = await mkdtemp(join(tmpdir(), "tributary-chromium-"));
  // A persistent context on a fresh directory: nothing from an earlier run
  // (cache, storage) can make the page look live.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 900 },
  });
  const consoleErrors = [];
  let allowNetworkErrors = false;
  const result = { mode, url };
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.on("console", (message) => {
      if (message.type() !== "error") return;
      // While the server is deliberately down, the browser logs its failed
      // reconnection attempts; those are the point of the test.
      if (allowNetworkErrors && /Failed to load resource|ERR_CONNECTION|EventSource/.test(message.text())) return;
      consoleErrors.push(message.text());
    });
    page.on("pageerror", (error) => consoleErrors.push(`uncaught: ${error.message}`));
    let navigations = 0;
    page.on("framenavigated", (frame) => {
      if (frame === page.mainFrame()) navigations += 1;
    });
    await page.addInitScript(() => {
      window.__dashboardUpdates = [];
      document.addEventListener("tributary:update", () => window.__dashboardUpdates.push(performance.now()));
    });

    log(`loading ${url}`);
    if (mode === "login") allowNetworkErrors = true;
    const response = await page.goto(url, { waitUntil: "load" });
    if (!response || response.status() !== 200) fail(`GET ${url} answered ${response?.status()}`);
    if (mode === "login") {
      const token = process.env.TRIBUTARY_DASHBOARD_TOKEN;
      if (!token) fail("TRIBUTARY_DASHBOARD_TOKEN is not set");
      await waitFor("the page never said signed-out", 15_000, async () => (await statusOf(page)) === "signed-out");
      result.signed_out = true;
      if (!(await page.isVisible("#sign-in"))) fail("the sign-in button is not shown");
      await Promise.all([page.waitForURL("**/login"), page.click("#sign-in")]);
      await page.fill("#token", `${token}-wrong`);
      const [refused] = await Promise.all([page.waitForNavigation(), page.click("#sign-in")]);
      result.wrong_token_status = refused?.status() ?? null;
      if (result.wrong_token_status !== 401) fail(`a wrong token answered ${result.wrong_token_status}`);
      if (!(await page.isVisible("[role=alert]"))) fail("a wrong token is not explained on the page");
      await page.fill("#token", token);
      await Promise.all([page.waitForURL((u) => new URL(u).pathname === "/"), page.click("#sign-in")]);
      log("signed in");
    }
    await waitFor("the page never said live", 15_000, async () => (await statusOf(page)) === "live");
    allowNetworkErrors = false;
    log("live");

    if (mode === "login") {
      const first = await waitFor("no highest probe number shown", 10_000, () => valueOf(page, "probe-highest"));
      const [highest] = await increases("the highest probe number", 5_000, first, () => valueOf(page, "probe-highest"));
      Object.assign(result, { probe_first: first, probe_later: highest });
      result.cookie_visible_to_scripts = await page.evaluate(() => document.cookie.includes("tributary_token"));
      result.sign_in_hidden = !(await page.isVisible("#sign-in"));
    } else if (mode === "check") {
      const first = await waitFor("no highest probe number shown", 10_000, () => valueOf(page, "probe-highest"));
      const [highest, ms] = await increases("the highest probe number", 3_000, first, () => valueOf(page, "probe-highest"));
      Object.assign(result, { probe_first: first, probe_later: highest, probe_increase_ms: ms });
      log(`highest probe number ${first} -> ${highest} in ${ms} ms`);

      const transit = await valueOf(page, "probe-transit");
      if (transit === null || !Number.isFinite(transit)) fail(`the average transit is not a number: ${transit}`);
      const transitText = await page.textContent("#probe-transit");
      if (!Number.isFinite(Number(transitText.replaceAll(",", "")))) fail(`the average transit shows ${transitText}`);
      result.avg_transit_ms = transit;

      const sms = await waitFor("no SMS counters shown", 10_000, () => smsHandled(page));
      const [smsLater, smsMs] = await increases("the SMS counters", 5_000, sms, () => smsHandled(page));
      Object.assign(result, { sms_first: sms, sms_later: smsLater, sms_increase_ms: smsMs });
      log(`SMS handled ${sms} -> ${smsLater}`);

      const metrics = await page.$$eval("#sensor-rows tr[data-metric]", (rows) => rows.map((r) => r.dataset.metric));
      if (metrics.length === 0) fail("the sensor table has no metric rows");
      result.sensor_metrics = metrics;
      result.fleet = await page.textContent("#fleet-state");

      log("recording update arrivals for 10 s");
      result.cadence = await cadence(page, 10_000);
      log(`cadence ${JSON.stringify(result.cadence)}`);
    } else {
      const lines = createInterface({ input: process.stdin });
      const marker = `marker-${Date.now()}-${Math.random()}`;
      await page.evaluate((marker) => (window.__reconnectMarker = marker), marker);
      allowNetworkErrors = true;
      emit({ event: "live" });
      if ((await readLine(lines)) !== "stopped") fail("expected the line 'stopped'");
      const stoppedAt = Date.now();
      await waitFor("the page never said reconnecting", 10_000, async () => (await statusOf(page)) === "reconnecting");
      result.reconnecting_after_ms = Date.now() - stoppedAt;
      emit({ event: "reconnecting" });
      if ((await readLine(lines)) !== "restarted") fail("expected the line 'restarted'");
      const restartedAt = Date.now();
      await waitFor("the page did not go live again", 20_000, async () => (await statusOf(page)) === "live");
      result.live_again_after_ms = Date.now() - restartedAt;
      allowNetworkErrors = false;
      log(`live again after ${result.live_again_after_ms} ms`);

      // Its numbers move again: fresh updates with a later server time, and
      // the restarted SMS producer's messages counted.
      const updatedAt = () => page.evaluate(() => Date.parse(document.getElementById("updated").dateTime) || null);
      const [, updateMs] = await increases("the update time", 5_000, await updatedAt(), updatedAt);
      result.update_after_restart_ms = updateMs;
      const sms = await waitFor("no SMS counters shown", 10_000, () => smsHandled(page));
      const [smsLater] = await increases("the SMS counters after the restart", 10_000, sms, () => smsHandled(page));
      Object.assign(result, { sms_first: sms, sms_later: smsLater });

      const still = await page.evaluate(() => window.__reconnectMarker);
      if (still !== marker) fail("the page was reloaded: the marker set before the stop is gone");
      if (navigations !== 1) fail(`the page navigated ${navigations} times; expected only the first load`);
      result.navigations = navigations;
      result.status = await statusOf(page);
      lines.close();
    }

    if (consoleErrors.length > 0) fail(`console errors: ${JSON.stringify(consoleErrors)}`);
    result.console_errors = consoleErrors.length;
    await mkdir(dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
    result.screenshot = screenshot;
    emit(result);
  } finally {
    await context.close();
    await rm(profile, { recursive: true, force: true });
  }
}

main().catch((error) => {
  if (error instanceof CheckFailed) {
    console.error(`FAIL: ${error.message}`);
  } else {
    console.error("FAIL: the browser test itself failed:", error);
  }
  process.exit(1);
});
