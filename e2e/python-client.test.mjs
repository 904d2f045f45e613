// The Python example (examples/python/stock_alerts_client.py) against the real
// binary: it receives alerts, keeps receiving across a server restart, and
// stops at once on a refused token. e2e/run.sh makes the venv it runs in.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { PATIENCE_MS, TestServer } from "./server.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const PYTHON = process.env.STOCKALERT_PYTHON ?? join(ROOT, "target", "e2e-venv", "bin", "python");
const CLIENT = join(ROOT, "examples", "python", "stock_alerts_client.py");

/** Runs the example; resolves with its exit code and output. `whenErr` is
 * called with each stderr line as it comes. */
function runClient(server, token, args, whenErr = () => {}) {
  if (!existsSync(PYTHON)) {
    throw new Error(`${PYTHON} is missing: run e2e/run.sh, which makes the venv`);
  }
  const child = spawn(
    PYTHON,
    [CLIENT, "--url", server.origin, "--tenant", "t1", "--store", "s1", ...args],
    { env: { ...process.env, STOCKALERT_TOKEN: token }, stdio: ["ignore", "pipe", "pipe"] },
  );
  let stdout = "";
  let stderr = "";
  let pending = "";
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  child.stdout.on("data", (chunk) => (stdout += chunk));
  child.stderr.on("data", (chunk) => {
    stderr += chunk;
    pending += chunk;
    const lines = pending.split("\n");
    pending = lines.pop();
    lines.forEach((line) => whenErr(line));
  });
  return new Promise((done, fail) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      fail(new Error(`client hung; stderr:\n${stderr}\nstdout:\n${stdout}`));
    }, PATIENCE_MS);
    child.on("exit", (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr });
    });
  });
}

test("the Python client receives alerts, also across a server restart", async () => {
  const server = await TestServer.start();
  try {
    await server.setReorder("t1", "s1", "ITEM001", 50, 100);
    await server.update("t1", "s1", "ITEM001", 60);
    const token = server.token("t1", "s1");

    let connections = 0;
    const steps = [];
    const finished = runClient(server, token, ["--count", "2"], (line) => {
      if (!line.startsWith("connected ")) {
        return;
      }
      connections += 1;
      // First connection: raise an alert, then restart the server. Second
      // connection (after the restart): raise another.
      if (connections === 1) {
        steps.push(
          server
            .update("t1", "s1", "ITEM001", -20)
            .then(() => server.restart())
            .then(() => server.update("t1", "s1", "ITEM001", -1)),
        );
      }
    });
    const { code, stdout, stderr } = await finished;
    await Promise.all(steps);

    assert.equal(code, 0, stderr);
    const alerts = stdout.trim().split("\n").map((line) => JSON.parse(line));
    assert.deepEqual(
      alerts.map((a) => [a.item_code, a.alert_type, a.current_quantity, a.seq]),
      [
        ["ITEM001", "reorder_point", 40, 1],
        ["ITEM001", "reorder_point", 39, 2],
      ],
    );
    assert.ok(connections >= 2, stderr);
    assert.match(stderr, /reconnecting \{"code": 1001, "reason": "Server shutting down"/);
    assert.ok(!stderr.includes(token) && !stdout.includes(token), "the client printed the token");
  } finally {
    await server.dispose();
  }
});

test("the Python client stops on a refused token without retrying", async () => {
  const server = await TestServer.start();
  try {
    const { code, stdout, stderr } = await runClient(server, "not.a.jwt", []);
    assert.equal(code, 3, stderr);
    assert.equal(stdout, "");
    assert.match(stderr, /refused \{"code": 1008, "reason": "Authentication failed"\}/);
    assert.equal(stderr.match(/^connecting /gm).length, 1, stderr);
  } finally {
    await server.dispose();
  }
});
