// Test support: the real stockalert binary on a fixed free port with a temporary data
// directory, tokens from `stockalert token`, and the stock API calls the tests need.
//
// Every wait is bounded by PATIENCE_MS, which only guards against hangs.

import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** Upper bound for any single wait: a hang guard, not a speed requirement. */
export const PATIENCE_MS = 20000;

/** The HS256 secret every test server and token uses. */
const SECRET = "e2e-test-secret-0123456789abcdef-0123456789";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");

/** The binary under test: built by `cargo test` (or `cargo build`) before these run. */
export const BINARY = process.env.STOCKALERT_BIN ?? join(ROOT, "target", "debug", "stockalert");

/** A TCP port that was free a moment ago (the server is restarted on the same one). */
export function freePort() {
  return new Promise((done, fail) => {
    const probe = createServer();
    probe.on("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => done(port));
    });
  });
}

/** The environment the server and `stockalert token` run with. */
function serverEnv(port, dataDir) {
  const env = { ...process.env };
  for (const name of Object.keys(env)) {
    if (name.startsWith("STOCKALERT_") || name === "ALERT_COOLDOWN_SECONDS") {
      delete env[name];
    }
  }
  return {
    ...env,
    STOCKALERT_LISTEN: `127.0.0.1:${port}`,
    STOCKALERT_JWT_SECRET: SECRET,
    STOCKALERT_DATA_DIR: dataDir,
    STOCKALERT_LOG_LEVEL: "info",
    ALERT_COOLDOWN_SECONDS: "0",
  };
}

/** A stockalert process; `restart()` keeps its port and data directory. */
export class TestServer {
  constructor(port, home) {
    this.port = port;
    this.home = home;
    this.dataDir = join(home, "data");
    this.origin = `http://127.0.0.1:${port}`;
    this.child = null;
    this.logs = [];
  }

  /** Starts a server on a free port with a fresh data directory. */
  static async start() {
    if (!existsSync(BINARY)) {
      throw new Error(`${BINARY} is missing: run cargo build (or cargo test) first`);
    }
    const home = mkdtempSync(join(tmpdir(), "stockalert-e2e-"));
    const server = new TestServer(await freePort(), home);
    await server.launch();
    return server;
  }

  /** Spawns the binary and waits for its `server_started` log line. */
  launch() {
    // cwd is the temp home, so no stockalert.toml of the checkout is picked up.
    const child = spawn(BINARY, [], {
      cwd: this.home,
      env: serverEnv(this.port, this.dataDir),
      stdio: ["ignore", "ignore", "pipe"],
    });
    this.child = child;
    let pending = "";
    return new Promise((done, fail) => {
      const timer = setTimeout(() => fail(new Error(`no server_started:\n${this.logText()}`)), PATIENCE_MS);
      child.on("exit", (code) => {
        clearTimeout(timer);
        fail(new Error(`stockalert exited with ${code}:\n${this.logText()}`));
      });
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", (chunk) => {
        pending += chunk;
        const lines = pending.split("\n");
        pending = lines.pop();
        for (const line of lines) {
          this.logs.push(line);
          if (line.includes('"server_started"')) {
            clearTimeout(timer);
            done();
          }
        }
      });
    });
  }

  logText() {
    return this.logs.join("\n");
  }

  /** SIGTERM, and wait for the exit. */
  stop() {
    const child = this.child;
    this.child = null;
    if (child === null || child.exitCode !== null) {
      return Promise.resolve();
    }
    return new Promise((done, fail) => {
      const timer = setTimeout(() => fail(new Error("stockalert did not exit")), PATIENCE_MS);
      child.removeAllListeners("exit");
      child.on("exit", () => {
        clearTimeout(timer);
        done();
      });
      child.kill("SIGTERM");
    });
  }

  /** Starts the server again on the same port and data directory. */
  async restart() {
    await this.stop();
    await this.launch();
  }

  /** Stops the server and removes its directory. */
  async dispose() {
    await this.stop();
    rmSync(this.home, { recursive: true, force: true });
  }

  /** A token for one store, made by `stockalert token` as an operator would. */
  token(tenant, store) {
    const out = execFileSync(BINARY, ["token", "--tenant", tenant, "--store", store], {
      cwd: this.home,
      env: serverEnv(this.port, this.dataDir),
      encoding: "utf8",
    });
    return out.trim();
  }

  /** One stock API call; fails the test unless it answers 200. */
  async call(method, tenant, store, path, body) {
    const url = `${this.origin}/api/v1/tenants/${tenant}/stores/${store}/stock/${path}`;
    const response = await fetch(url, {
      method,
      headers: {
        Authorization: `Bearer ${this.token(tenant, store)}`,
        "Content-Type": "application/json",
      },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    if (response.status !== 200) {
      throw new Error(`${method} ${path}: ${response.status} ${text}`);
    }
    return JSON.parse(text);
  }

  setReorder(tenant, store, item, reorderPoint, reorderQuantity) {
    return this.call("PUT", tenant, store, `${item}/reorder`, { reorderPoint, reorderQuantity });
  }

  setMinimum(tenant, store, item, minimumQuantity) {
    return this.call("PUT", tenant, store, `${item}/minimum`, { minimumQuantity });
  }

  update(tenant, store, item, quantityChange) {
    return this.call("PUT", tenant, store, `${item}/update`, {
      quantityChange,
      updateType: "sale",
    });
  }
}
