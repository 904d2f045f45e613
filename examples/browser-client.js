// stockalert browser client: one store's alert WebSocket, kept open.
//
// An ES module with no dependencies. The store dashboard served by stockalert
// imports this very file (as /stock-alerts-client.js), so what the dashboard
// does is what an integrator gets:
//
// - reconnects after any close except 1008 (policy: a refused or expired
//   token), waiting 1 s, 2 s, 4 s ... up to 30 s, each wait drawn at random
//   from its upper half so that a store's tablets do not reconnect in step;
// - remembers the `seq` of the last alert it saw and reconnects with
//   `?since=<seq>`, so the server replays what was raised while it was away;
// - never logs the token, which travels in the query string as the server's
//   contract requires (the server never logs query strings).
//
// Usage:
//   import { connectStockAlerts } from "./browser-client.js";
//   const client = connectStockAlerts({
//     tenantId: "tenant001", storeCode: "store001", token,
//     onAlert: (alert, info) => console.log(alert.item_code, info),
//     onStatus: (status, detail) => console.log(status, detail),
//   });
//   client.close();

/** Close code the server sends for a refused or expired token: never retried. */
export const CLOSE_POLICY = 1008;

/** First reconnect wait, in milliseconds. */
export const FIRST_DELAY_MS = 1000;

/** Longest reconnect wait, in milliseconds. */
export const MAX_DELAY_MS = 30000;

/**
 * The wait before reconnect attempt `attempt` (0 for the first): the ceiling
 * doubles from 1 s up to 30 s, and the wait is drawn from the ceiling's upper
 * half. `random` returns a number in [0, 1).
 */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** Math.min(attempt, 16));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/**
 * The `ws://` or `wss://` URL of a store's alert socket. `baseUrl` is the
 * server's `http://` or `https://` origin; `since`, when a number, asks the
 * server to replay the alerts logged after that sequence number.
 */
export function alertsUrl({ baseUrl, tenantId, storeCode, token, since }) {
  const url = new URL(
    `/api/v1/ws/${encodeURIComponent(tenantId)}/${encodeURIComponent(storeCode)}`,
    baseUrl,
  );
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("token", token);
  if (Number.isInteger(since) && since >= 0) {
    url.searchParams.set("since", String(since));
  }
  return url.toString();
}

/**
 * Opens a store's alert socket and keeps it open until `close()`.
 *
 * Options:
 * - `tenantId`, `storeCode`, `token` (required);
 * - `baseUrl`: the server origin (default: the page's own origin);
 * - `since`: the last alert `seq` already seen, to resume after it;
 * - `onAlert(alert, info)`: each `stock_alert` message; `info.current` is
 *   true for the store's state sent on connecting (no `seq`), `info.replayed`
 *   for alerts raised while this client was away;
 * - `onStatus(status, detail)`: "connecting", "connected" (detail: the
 *   server's connection message), "reconnecting" ({ delayMs, attempt, code,
 *   reason }), "refused" ({ code, reason }: the server refused the token; no
 *   retry), "closed" (after `close()`);
 * - `onSeq(seq)`: the resume point moved (to persist it across page loads);
 * - `WebSocket`: the constructor to use (default: the global one).
 *
 * Returns `{ close(), lastSeq() }`.
 */
export function connectStockAlerts(options) {
  const {
    tenantId,
    storeCode,
    token,
    baseUrl = globalThis.location?.origin,
    onAlert = () => {},
    onStatus = () => {},
    onSeq = () => {},
    WebSocket: Socket = globalThis.WebSocket,
    random = Math.random,
  } = options;
  let lastSeq = Number.isInteger(options.since) ? options.since : null;
  let attempt = 0;
  let socket = null;
  let timer = null;
  let stopped = false;

  // Alerts with a seq up to this one were logged before the current
  // connection opened: the replay of what was missed.
  let greetingSeq = 0;

  const setSeq = (seq) => {
    if (seq !== lastSeq) {
      lastSeq = seq;
      onSeq(seq);
    }
  };

  const onMessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return; // "pong" and anything else that is not JSON
    }
    if (message === null || typeof message !== "object") {
      return;
    }

    if (message.type === "connection") {
      attempt = 0;
      greetingSeq = Number.isInteger(message.last_seq) ? message.last_seq : 0;

      // Without a complete replay the server sent the current state instead,
      // and live alerts continue after its last seq.
      if (message.replay !== "complete" && Number.isInteger(message.last_seq)) {
        setSeq(message.last_seq);
      }
      onStatus("connected", message);
      return;
    }

    if (message.type === "stock_alert") {
      const hasSeq = Number.isInteger(message.seq);
      if (hasSeq) {
        setSeq(message.seq);
      }
      onAlert(message, {
        current: !hasSeq,
        replayed: hasSeq && message.seq <= greetingSeq,
      });
    }
  };

  const open = () => {
    timer = null;
    if (stopped) {
      return;
    }
    onStatus("connecting", { attempt });
    const url = alertsUrl({ baseUrl, tenantId, storeCode, token, since: lastSeq ?? undefined });
    const ws = new Socket(url);
    socket = ws;
    ws.onmessage = onMessage;
    ws.onclose = (event) => {
      if (socket !== ws) {
        return;
      }
      socket = null;
      if (event.code === CLOSE_POLICY) {
        stopped = true;
        onStatus("refused", { code: event.code, reason: event.reason || "refused" });
        return;
      }
      const delayMs = backoffDelay(attempt, random);
      attempt += 1;
      onStatus("reconnecting", {
        delayMs,
        attempt,
        code: event.code,
        reason: event.reason,
      });
      timer = setTimeout(open, delayMs);
    };
  };

  open();

  return {
    /** Closes the socket and stops reconnecting. */
    close() {
      if (stopped) {
        return;
      }
      stopped = true;
      if (timer !== null) {
        clearTimeout(timer);
        timer = null;
      }
      // Detach first: a page that connects again at once must not hear this
      // socket's close event after the new one has reported its state.
      const ws = socket;
      socket = null;
      if (ws !== null) {
        ws.onclose = null;
        ws.onmessage = null;
        ws.close(1000, "client closed");
      }
      onStatus("closed", {});
    },
    /** The last alert seq seen (the resume point), or null before any. */
    lastSeq() {
      return lastSeq;
    },
  };
}
