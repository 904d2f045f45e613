// stockalert store dashboard: live alerts for one store, and the items under a
// threshold. Served by the stockalert binary; no build step, no third-party code.
//
// Tenant, store and token come from the form or from the URL fragment
// (#tenant=..&store=..&token=..), which browsers never send to a server. The
// token is kept in sessionStorage only, so it ends with the tab. Page text is
// only ever set through textContent: nothing a server or a URL sends becomes
// markup.

import { connectStockAlerts } from "./stock-alerts-client.js";

/** Most alerts the list keeps; older ones drop off the end. */
const MAX_ALERTS = 100;

/** How long the table waits after an alert before it refreshes, so a burst of
 * alerts (a batch update, a replay) costs one refresh. */
const REFRESH_DEBOUNCE_MS = 250;

/** The identifier rule the server applies to tenants and stores. */
const IDENTIFIER = /^(?!\.+$)[A-Za-z0-9_.-]{1,64}$/;

/** Words for each alert type: the list and the table never rely on colour alone. */
const ALERT_LABELS = {
  reorder_point: "Reorder point",
  minimum_stock: "Minimum stock",
};

const STORAGE = {
  tenant: "stockalert.tenant",
  store: "stockalert.store",
  token: "stockalert.token",
};

const $ = (id) => document.getElementById(id);

const ui = {
  form: $("settings"),
  tenant: $("tenant"),
  store: $("store"),
  token: $("token"),
  connect: $("connect"),
  disconnect: $("disconnect"),
  notify: $("notify"),
  formError: $("form-error"),
  where: $("where"),
  status: $("status"),
  statusText: $("status-text"),
  alerts: $("alerts"),
  alertsEmpty: $("alerts-empty"),
  alertCount: $("alert-count"),
  clear: $("clear"),
  refresh: $("refresh"),
  low: $("low"),
  lowBody: $("low-body"),
  lowNote: $("low-note"),
};

const numbers = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });

/** The session in use: settings, the client, and the pending table refresh. */
const session = {
  settings: null,
  client: null,
  refreshTimer: null,
  refreshSerial: 0,
};

/** Reads sessionStorage, which a locked-down browser may refuse. */
function load(key) {
  try {
    return sessionStorage.getItem(key) ?? "";
  } catch {
    return "";
  }
}

function save(key, value) {
  try {
    sessionStorage.setItem(key, value);
  } catch {
    // Storage refused: the page still works for this load.
  }
}

/** The key under which a store's resume point is kept for this tab. */
function seqKey(settings) {
  return `stockalert.seq.${settings.tenant}/${settings.store}`;
}

/** Settings from the URL fragment, falling back to this tab's storage. */
function initialSettings() {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const pick = (name) => fragment.get(name) ?? load(STORAGE[name]);
  return { tenant: pick("tenant"), store: pick("store"), token: pick("token") };
}

/** Why the settings cannot be used, or null when they can. */
function settingsProblem({ tenant, store, token }) {
  if (!IDENTIFIER.test(tenant)) {
    return "Tenant must be 1 to 64 letters, digits, '_', '.' or '-'.";
  }
  if (!IDENTIFIER.test(store)) {
    return "Store must be 1 to 64 letters, digits, '_', '.' or '-'.";
  }
  if (token.trim() === "") {
    return "Enter the access token for this store.";
  }
  return null;
}

// ---- connection state ------------------------------------------------------

function showStatus(state, text) {
  ui.status.dataset.state = state;
  ui.statusText.textContent = text;
  const live = state === "connected" || state === "connecting" || state === "reconnecting";
  ui.disconnect.disabled = !live;
}

function onStatus(status, detail) {
  switch (status) {
    case "connecting":
      showStatus("connecting", detail.attempt > 0 ? "Reconnecting…" : "Connecting…");
      break;
    case "connected":
      showStatus("connected", "Connected");
      scheduleRefresh(0);
      break;
    case "reconnecting": {
      const seconds = Math.max(1, Math.round(detail.delayMs / 1000));
      showStatus("reconnecting", `Connection lost; reconnecting in ${seconds} s`);
      break;
    }
    case "refused":
      // The server refused the token (1008): retrying would only be refused again.
      showStatus("refused", `Refused: ${detail.reason}. Check the token, then Connect.`);
      session.client = null;
      break;
    case "closed":
      showStatus("idle", "Disconnected");
      break;
    default:
      break;
  }
}

function connect(settings) {
  disconnect();
  session.settings = settings;
  ui.where.textContent = `· ${settings.tenant} / ${settings.store}`;
  const stored = Number.parseInt(load(seqKey(settings)), 10);
  session.client = connectStockAlerts({
    tenantId: settings.tenant,
    storeCode: settings.store,
    token: settings.token,
    since: Number.isInteger(stored) && stored >= 0 ? stored : undefined,
    onAlert,
    onStatus,
    onSeq: (seq) => save(seqKey(settings), String(seq)),
  });
}

function disconnect() {
  if (session.client !== null) {
    session.client.close();
    session.client = null;
  }
}

// ---- the alert list --------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function quantity(value) {
  return typeof value === "number" && Number.isFinite(value) ? numbers.format(value) : "–";
}

/** The local time of an RFC 3339 timestamp, with the date when it is not today. */
function localTime(timestamp) {
  const date = new Date(timestamp);
  if (Number.isNaN(date.getTime())) {
    return "";
  }
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

/** One alert's figures in words. */
function figures(alert) {
  const parts = [`Stock ${quantity(alert.current_quantity)}`];
  if (alert.alert_type === "minimum_stock") {
    parts.push(`minimum ${quantity(alert.minimum_quantity)}`);
  } else {
    parts.push(`reorder point ${quantity(alert.reorder_point)}`);
  }
  parts.push(`reorder qty ${quantity(alert.reorder_quantity)}`);
  return parts.join(" · ");
}

function onAlert(alert, info) {
  const type = ALERT_LABELS[alert.alert_type] ? alert.alert_type : "reorder_point";
  const item = String(alert.item_code ?? "");

  const entry = element("li", `alert ${type}`);
  entry.dataset.item = item;
  entry.dataset.type = type;
  const title = element("span", "item");
  title.append(element("span", `badge ${type}`, ALERT_LABELS[type]), " ", item);
  const time = element("time", "", localTime(alert.timestamp));
  time.dateTime = String(alert.timestamp ?? "");
  const detail = element("p", "figures", figures(alert));
  if (info.current) {
    detail.append(" ", element("span", "note", "(already low when connected)"));
  } else if (info.replayed) {
    detail.append(" ", element("span", "note", "(while disconnected)"));
  }
  entry.append(title, time, detail);

  ui.alerts.prepend(entry);
  while (ui.alerts.children.length > MAX_ALERTS) {
    ui.alerts.lastElementChild.remove();
  }
  updateAlertCount();

  if (!info.current) {
    notify(alert, type, item);
  }
  scheduleRefresh(REFRESH_DEBOUNCE_MS);
}

function updateAlertCount() {
  const count = ui.alerts.children.length;
  ui.alertCount.textContent = String(count);
  ui.alertsEmpty.hidden = count > 0;
}

// ---- notifications ---------------------------------------------------------

function notificationsSupported() {
  return typeof Notification === "function";
}

function updateNotifyButton() {
  ui.notify.hidden = !notificationsSupported() || Notification.permission !== "default";
}

function notify(alert, type, item) {
  if (!notificationsSupported() || Notification.permission !== "granted") {
    return;
  }
  try {
    new Notification(`${ALERT_LABELS[type]}: ${item}`, {
      body: figures(alert),
      tag: `${type}/${item}`,
    });
  } catch {
    // Some browsers only allow notifications from a service worker.
  }
}

// ---- the table of items under a threshold ----------------------------------

function scheduleRefresh(delay) {
  if (session.refreshTimer !== null) {
    clearTimeout(session.refreshTimer);
  }
  session.refreshTimer = setTimeout(() => {
    session.refreshTimer = null;
    refreshLow();
  }, delay);
}

async function fetchItems(settings, which) {
  const path =
    `/api/v1/tenants/${encodeURIComponent(settings.tenant)}` +
    `/stores/${encodeURIComponent(settings.store)}/stock/${which}`;
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${settings.token}`, Accept: "application/json" },
    cache: "no-store",
    credentials: "omit",
  });
  const body = await response.json().catch(() => null);
  if (!response.ok || body === null || !Array.isArray(body.data)) {
    const reason = body && typeof body.message === "string" ? body.message : response.status;
    throw new Error(`the server answered ${response.status} (${reason})`);
  }
  return body.data;
}

async function refreshLow() {
  const settings = session.settings;
  if (settings === null) {
    return;
  }
  const serial = ++session.refreshSerial;
  let minimum;
  let reorder;
  try {
    [minimum, reorder] = await Promise.all([
      fetchItems(settings, "low"),
      fetchItems(settings, "reorder-alerts"),
    ]);
  } catch (error) {
    if (serial === session.refreshSerial) {
      ui.lowNote.textContent = `Could not load the items: ${error.message}.`;
      ui.lowNote.hidden = false;
    }
    return;
  }
  if (serial !== session.refreshSerial) {
    return; // a newer refresh started meanwhile
  }

  const rows = new Map();
  const add = (item, type) => {
    const code = String(item.itemCode ?? "");
    const row = rows.get(code) ?? { item, types: [] };
    row.types.push(type);
    rows.set(code, row);
  };
  minimum.forEach((item) => add(item, "minimum_stock"));
  reorder.forEach((item) => add(item, "reorder_point"));
  renderLow([...rows.entries()].sort(([a], [b]) => a.localeCompare(b)));
}

function renderLow(rows) {
  ui.lowBody.replaceChildren(
    ...rows.map(([code, { item, types }]) => {
      const row = element("tr");
      row.dataset.item = code;
      const under = element("td");
      types.forEach((type, index) => {
        under.append(index > 0 ? " " : "", element("span", `badge ${type}`, ALERT_LABELS[type]));
      });
      row.append(
        element("td", "item", code),
        element("td", "num", quantity(item.currentQuantity)),
        element("td", "num", quantity(item.minimumQuantity)),
        element("td", "num", quantity(item.reorderPoint)),
        element("td", "num", quantity(item.reorderQuantity)),
        under,
      );
      return row;
    }),
  );
  ui.low.hidden = rows.length === 0;
  ui.lowNote.hidden = rows.length > 0;
  ui.lowNote.textContent = "No item is under a threshold.";
}

// ---- wiring ----------------------------------------------------------------

function readForm() {
  return {
    tenant: ui.tenant.value.trim(),
    store: ui.store.value.trim(),
    token: ui.token.value.trim(),
  };
}

function start() {
  const settings = initialSettings();
  ui.tenant.value = settings.tenant;
  ui.store.value = settings.store;
  ui.token.value = settings.token;
  showStatus("idle", "Not connected");
  updateAlertCount();
  updateNotifyButton();

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = readForm();
    const problem = settingsProblem(chosen);
    ui.formError.hidden = problem === null;
    ui.formError.textContent = problem ?? "";
    if (problem !== null) {
      return;
    }
    Object.entries(chosen).forEach(([name, value]) => save(STORAGE[name], value));
    connect(chosen);
  });
  ui.disconnect.addEventListener("click", disconnect);
  ui.clear.addEventListener("click", () => {
    ui.alerts.replaceChildren();
    updateAlertCount();
  });
  ui.refresh.addEventListener("click", () => scheduleRefresh(0));
  ui.notify.addEventListener("click", async () => {
    await Notification.requestPermission();
    updateNotifyButton();
  });

  // A complete fragment (a bookmark on a tablet) connects at once.
  if (settingsProblem(settings) === null) {
    Object.entries(settings).forEach(([name, value]) => save(STORAGE[name], value));
    connect(settings);
  }
}

start();
