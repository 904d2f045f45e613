"""stockalert Python client: one store's alerts over WebSocket, with asyncio.

Built on the `websockets` package (the asyncio API of version 13 and later).
It keeps the connection open the way the browser client does:

- after any close but 1008 (a refused or expired token) it reconnects, waiting
  1 s, 2 s, 4 s ... up to 30 s, each wait drawn from its upper half;
- it remembers the `seq` of the last alert and reconnects with
  `?since=<seq>`, so alerts raised while it was away are replayed;
- it never prints the token (the server's contract puts it in the query
  string; the server never logs query strings).

Run as a program, it prints each alert as one JSON line on stdout and its
connection state on stderr:

    STOCKALERT_TOKEN=$(stockalert token --tenant tenant001 --store store001) \\
        python stock_alerts_client.py --tenant tenant001 --store store001

Or use `StockAlertsClient` from your own asyncio code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

#: Close code the server sends for a refused or expired token: never retried.
CLOSE_POLICY = 1008

#: First reconnect wait, in seconds.
FIRST_DELAY = 1.0

#: Longest reconnect wait, in seconds.
MAX_DELAY = 30.0

#: Exit code when the server refused the token.
EXIT_REFUSED = 3


class Refused(Exception):
    """The server closed with 1008: the token was refused or expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"refused by the server: {reason}")
        self.reason = reason


def backoff_delay(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """The wait before reconnect attempt `attempt` (0 for the first), seconds."""
    ceiling = min(MAX_DELAY, FIRST_DELAY * 2 ** min(attempt, 16))
    return ceiling / 2 + rand() * ceiling / 2


def alerts_url(base_url: str, tenant: str, store: str, token: str, since: int | None) -> str:
    """The ws:// or wss:// URL of a store's alert socket on the http(s) server `base_url`."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = f"/api/v1/ws/{quote(tenant, safe='')}/{quote(store, safe='')}"
    query = {"token": token}
    if since is not None:
        query["since"] = str(since)
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


AlertHandler = Callable[[dict, dict], Awaitable[None] | None]
StatusHandler = Callable[[str, dict], None]


@dataclass
class StockAlertsClient:
    """Keeps one store's alert socket open; call `run()` and cancel it to stop.

    `on_alert(alert, info)` gets every `stock_alert` message; `info["current"]`
    is true for the store's state sent on connecting (no `seq`), and
    `info["replayed"]` for alerts raised while the client was away.
    `on_status(status, detail)` hears "connecting", "connected",
    "reconnecting" and "refused".
    """

    base_url: str
    tenant: str
    store: str
    token: str
    on_alert: AlertHandler
    on_status: StatusHandler = lambda status, detail: None
    #: The last alert seq seen: where a reconnect resumes. None before any.
    last_seq: int | None = None
    _greeting_seq: int = field(default=0, repr=False)

    async def run(self) -> None:
        """Runs until cancelled; raises `Refused` when the server refuses the token."""
        attempt = 0
        while True:
            self.on_status("connecting", {"attempt": attempt})
            url = alerts_url(self.base_url, self.tenant, self.store, self.token, self.last_seq)
            code, reason = 1006, ""
            try:
                async with connect(url, open_timeout=10, max_size=1 << 20) as ws:
                    try:
                        async for raw in ws:
                            if await self._handle(raw):
                                attempt = 0
                    except ConnectionClosed:
                        pass
                    if ws.close_code is not None:
                        code, reason = ws.close_code, ws.close_reason or ""
            except ConnectionClosed as closed:
                if closed.rcvd is not None:
                    code, reason = closed.rcvd.code, closed.rcvd.reason
            except (OSError, InvalidHandshake, TimeoutError) as error:
                reason = type(error).__name__

            if code == CLOSE_POLICY:
                self.on_status("refused", {"code": code, "reason": reason})
                raise Refused(reason or "refused")
            delay = backoff_delay(attempt)
            attempt += 1
            self.on_status(
                "reconnecting", {"code": code, "reason": reason, "delay": round(delay, 2)}
            )
            await asyncio.sleep(delay)

    async def _handle(self, raw: str | bytes) -> bool:
        """Handles one message; returns whether it was the connection message."""
        try:
            message = json.loads(raw)
        except ValueError:
            return False  # "pong" and other non-JSON text
        if not isinstance(message, dict):
            return False

        if message.get("type") == "connection":
            last = message.get("last_seq")
            self._greeting_seq = last if isinstance(last, int) else 0
            # Without a complete replay the server sent the current state
            # instead, and live alerts continue after its last seq.
            if message.get("replay") != "complete" and isinstance(last, int):
                self.last_seq = last
            self.on_status("connected", message)
            return True

        if message.get("type") == "stock_alert":
            seq = message.get("seq")
            has_seq = isinstance(seq, int)
            if has_seq:
                self.last_seq = seq
            info = {"current": not has_seq, "replayed": has_seq and seq <= self._greeting_seq}
            result = self.on_alert(message, info)
            if asyncio.iscoroutine(result):
                await result
        return False


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Print a store's stock alerts as JSON lines.")
    parser.add_argument("--url", default="http://127.0.0.1:8006", help="server origin")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument(
        "--token",
        default=os.environ.get("STOCKALERT_TOKEN"),
        help="access token (default: $STOCKALERT_TOKEN, which keeps it out of `ps`)",
    )
    parser.add_argument("--since", type=int, help="resume after this alert seq")
    parser.add_argument("--count", type=int, help="exit after this many live alerts")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token or set STOCKALERT_TOKEN")

    done = asyncio.Event()
    seen = 0

    def on_alert(alert: dict, info: dict) -> None:
        nonlocal seen
        print(json.dumps(alert), flush=True)
        if not info["current"]:
            seen += 1
            if args.count is not None and seen >= args.count:
                done.set()

    def on_status(status: str, detail: dict) -> None:
        words = {k: v for k, v in detail.items() if k in ("attempt", "code", "reason", "delay")}
        print(f"{status} {json.dumps(words)}", file=sys.stderr, flush=True)

    client = StockAlertsClient(
        args.url, args.tenant, args.store, args.token, on_alert, on_status, args.since
    )
    runner = asyncio.create_task(client.run())
    waiter = asyncio.create_task(done.wait())
    await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
    runner.cancel()
    waiter.cancel()
    try:
        await runner
    except asyncio.CancelledError:
        pass
    except Refused as refused:
        print(f"stock_alerts_client: {refused}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(sys.argv[1:])))
    except KeyboardInterrupt:
        sys.exit(130)
