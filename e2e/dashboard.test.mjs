// The store dashboard end to end: the real binary, Debian's Chromium driven by
// playwright-core, alerts raised over the stock API.
//
// Run by e2e/run.sh after `cargo test` has built target/debug/stockalert.
// Waits are hang guards except where the issue sets a bound (2 s from the update
// to the alert and the table row), and one wait that proves a retry does not
// happen (see the refused-token test).

import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { PATIENCE_MS, TestServer } from "./server.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");

/** Where the screenshot of the page with alerts is kept as a test artefact. */
const SCREENSHOT = join(ROOT, "target", "dashboard.png");

/** The same page on a phone-sized screen. */
const PHONE_SCREENSHOT = join(ROOT, "target", "dashboard-phone.png");

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/** Chromium flags: no sandbox (CI runs as root), no GPU, and nothing that
 * reaches out to the internet on its own. Headless mode and the fresh
 * --user-data-dir are passed by playwright-core from the launch options. */
const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** The bound the issue sets from an update to what the page shows. */
const SHOWN_WITHIN_MS = 2000;

const TENANT = "tenant001";
const STORE = "store001";

let profile;
let context;

before(async () => {
  profile = mkdtempSync(join(tmpdir(), "stockalert-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1200, height: 860 },
    locale: "en-GB",
    timezoneId: "UTC",
  });
});

after(async () => {
  await context?.close();
  rmSync(profile, { recursive: true, force: true });
});

/** The dashboard URL for a store, with the settings in the fragment. */
function dashboardUrl(server, token) {
  const fragment = new URLSearchParams({ tenant: TENANT, store: STORE, token });
  return `${server.origin}/#${fragment}`;
}

/** Opens a tab that records the WebSocket URLs it opens (tokens cut out). */
async function openPage(url) {
  const page = await context.newPage();
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url().replace(/token=[^&]*/, "token=…")));
  await page.goto(url);
  return { page, sockets };
}

/** An element's text as written (not as styled), whitespace collapsed. */
async function textOf(locator) {
  return (await locator.textContent()).replace(/\s+/g, " ").trim();
}

/** The text of each cell of a table row. */
function cellsOf(row) {
  return row.locator("td").evaluateAll((cells) => cells.map((cell) => cell.textContent));
}

async function waitForState(page, state, timeout = PATIENCE_MS) {
  await page.waitForSelector(`#status[data-state="${state}"]`, { timeout });
}

test("an alert shows in the list and its item in the table within 2 s", async () => {
  const server = await TestServer.start();
  try {
    await server.setReorder(TENANT, STORE, "ITEM001", 50, 100);
    await server.update(TENANT, STORE, "ITEM001", 60);
    await server.setReorder(TENANT, STORE, "ITEM002", 8, 24);
    await server.setMinimum(TENANT, STORE, "ITEM002", 10);
    await server.update(TENANT, STORE, "ITEM002", 15);

    const token = server.token(TENANT, STORE);
    const { page } = await openPage(dashboardUrl(server, token));
    await waitForState(page, "connected");
    assert.equal(await page.locator("#alerts li").count(), 0);

    // ITEM001 drops to 40, under its reorder point of 50.
    const started = Date.now();
    await server.update(TENANT, STORE, "ITEM001", -20);
    const alert = page.locator('#alerts li[data-item="ITEM001"]');
    const row = page.locator('#low-body tr[data-item="ITEM001"]');
    await alert.waitFor({ timeout: SHOWN_WITHIN_MS });
    await row.waitFor({ timeout: Math.max(1, SHOWN_WITHIN_MS - (Date.now() - started)) });

    assert.equal(await textOf(alert.locator(".item")), "Reorder point ITEM001");
    assert.equal(
      await textOf(alert.locator(".figures")),
      "Stock 40 · reorder point 50 · reorder qty 100",
    );
    assert.match(await alert.locator("time").getAttribute("datetime"), /^\d{4}-.*Z$/);
    assert.deepEqual(await cellsOf(row), ["ITEM001", "40", "0", "50", "100", "Reorder point"]);

    // ITEM002 drops to 5: under both its minimum (10) and reorder point (8).
    await server.update(TENANT, STORE, "ITEM002", -10);
    await page.locator('#alerts li[data-type="minimum_stock"]').waitFor({ timeout: PATIENCE_MS });
    await page
      .locator('#low-body tr[data-item="ITEM002"] .badge.minimum_stock')
      .waitFor({ timeout: PATIENCE_MS });
    const items = await page.locator("#alerts li").evaluateAll((nodes) =>
      nodes.map((node) => `${node.dataset.item}/${node.dataset.type}`),
    );
    assert.deepEqual(items, [
      "ITEM002/minimum_stock",
      "ITEM002/reorder_point",
      "ITEM001/reorder_point",
    ]);
    assert.equal(await page.textContent("#alert-count"), "3");
    const both = page.locator('#low-body tr[data-item="ITEM002"]');
    assert.deepEqual(await cellsOf(both), ["ITEM002", "5", "10", "8", "24", "Minimum stock Reorder point"]);
    assert.equal(await page.locator("#low-body tr").count(), 2);

    // The token lives in this tab's sessionStorage, nowhere more lasting.
    const stored = await page.evaluate(() => ({
      session: sessionStorage.getItem("stockalert.token"),
      local: Object.keys(localStorage).length,
      cookies: document.cookie,
    }));
    assert.deepEqual(stored, { session: token, local: 0, cookies: "" });

    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });

    // On a phone-sized screen nothing runs off the side of the page.
    await page.setViewportSize({ width: 360, height: 780 });
    const overflow = await page.evaluate(
      () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
    );
    assert.equal(overflow, 0, "the page scrolls sideways on a phone");
    await page.screenshot({ path: PHONE_SCREENSHOT, fullPage: true });
    assert.ok(!server.logText().includes(token), "the token reached the server log");
    await page.close();
  } finally {
    await server.dispose();
  }
});

test("a refused token shows the reason and is not retried", async () => {
  const server = await TestServer.start();
  try {
    const { page, sockets } = await openPage(dashboardUrl(server, "not.a.jwt"));
    await waitForState(page, "refused");
    assert.match(await page.textContent("#status-text"), /Refused: Authentication failed/);

    // A retry would start within 1 s (the first backoff draws from 0.5-1 s);
    // waiting three times that and seeing no second socket shows there is none.
    await page.waitForTimeout(3000);
    assert.equal(sockets.length, 1, `sockets opened: ${sockets.join(", ")}`);
    assert.equal(await page.getAttribute("#status", "data-state"), "refused");
    assert.equal(server.logs.filter((l) => l.includes('"websocket_auth_failed"')).length, 1);

    // A good token from the form connects.
    await page.fill("#token", server.token(TENANT, STORE));
    await page.press("#token", "Enter");
    await waitForState(page, "connected");
    await page.close();
  } finally {
    await server.dispose();
  }
});

test("after a restart the page reconnects and shows what it missed", async () => {
  const server = await TestServer.start();
  try {
    await server.setReorder(TENANT, STORE, "ITEM001", 50, 100);
    await server.update(TENANT, STORE, "ITEM001", 100);
    await server.setMinimum(TENANT, STORE, "ITEM003", 5);
    await server.update(TENANT, STORE, "ITEM003", 20);

    const { page, sockets } = await openPage(dashboardUrl(server, server.token(TENANT, STORE)));
    await waitForState(page, "connected");
    await server.update(TENANT, STORE, "ITEM001", -60);
    await page.locator('#alerts li[data-item="ITEM001"]').waitFor({ timeout: PATIENCE_MS });

    // Keep the page away (offline) across the restart, so the next alert is
    // raised while it is disconnected and can only arrive by replay.
    await context.setOffline(true);
    await server.restart();
    await waitForState(page, "reconnecting");
    await server.update(TENANT, STORE, "ITEM003", -18);
    await context.setOffline(false);

    await waitForState(page, "connected");
    const missed = page.locator('#alerts li[data-item="ITEM003"]');
    await missed.waitFor({ timeout: PATIENCE_MS });
    assert.equal(await textOf(missed.locator(".item")), "Minimum stock ITEM003");
    assert.equal(
      await textOf(missed.locator(".figures")),
      "Stock 2 · minimum 5 · reorder qty 0 (while disconnected)",
    );
    await page.locator('#low-body tr[data-item="ITEM003"]').waitFor({ timeout: PATIENCE_MS });

    // The first socket had nothing to resume from; every later one asked to
    // resume after the one alert already shown (seq 1).
    assert.ok(!sockets[0].includes("since="), sockets[0]);
    assert.ok(sockets.length >= 2, sockets.join(", "));
    for (const url of sockets.slice(1)) {
      assert.match(url, /&since=1$/);
    }
    assert.equal(await page.locator("#alerts li").count(), 2);
    await page.close();
  } finally {
    await server.dispose();
  }
});
