// useStockAlerts: a React hook over the stockalert browser client.
//
//   const { alerts, status, clear } = useStockAlerts(tenantId, storeCode, token);
//
// - `alerts`: the store's alerts, newest first, at most `limit` (default 100);
// - `status`: { state, reason }, state one of "idle", "connecting", "connected",
//   "reconnecting", "refused" (the token was refused: no retry; `reason` says
//   why), "closed";
// - `clear()`: empties the list.
//
// The socket opens when all three arguments are set and closes on unmount or
// when any of them changes. Reconnects, backoff and `?since=` resume are the
// browser client's (./browser-client.js, in the same folder). Plain JavaScript,
// no JSX, so it works in any React 18+ build as it is.

import { useCallback, useEffect, useState } from "react";

import { connectStockAlerts } from "./browser-client.js";

/** Alerts kept when no `limit` option is given. */
const DEFAULT_LIMIT = 100;

export function useStockAlerts(tenantId, storeCode, token, options = {}) {
  const { baseUrl, limit = DEFAULT_LIMIT } = options;
  const [alerts, setAlerts] = useState([]);
  const [status, setStatus] = useState({ state: "idle", reason: "" });

  useEffect(() => {
    if (!tenantId || !storeCode || !token) {
      setStatus({ state: "idle", reason: "" });
      return undefined;
    }
    const client = connectStockAlerts({
      tenantId,
      storeCode,
      token,
      baseUrl,
      onAlert: (alert, info) => {
        setAlerts((previous) => [{ ...alert, ...info }, ...previous].slice(0, limit));
      },
      onStatus: (state, detail) => {
        setStatus({ state, reason: state === "refused" ? detail.reason : "" });
      },
    });
    return () => client.close();
  }, [tenantId, storeCode, token, baseUrl, limit]);

  const clear = useCallback(() => setAlerts([]), []);

  return { alerts, status, clear };
}
