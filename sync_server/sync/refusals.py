"""Refusing a websocket without inviting it straight back (issue 15).

y-websocket 1.x and 2.x reset their reconnect backoff when a socket opens, so a refusal sent right
after the accept (4401, 4403, 1013, ...) had them back within ~100 ms, forever: one bad token on a
fleet of phones became hundreds of authentications and log lines a second. Each client retries only
once its socket closes, so a refused socket is held open for `hold` seconds first (nothing is read
or sent meanwhile but what the close handshake needs; frames that arrive are read and dropped, so
they never hold the frame budget) and then closed with its code and reason. Measured per client
version in bench/refusal_storm.py (numbers in bench/RESULTS.md). 3.x stops at a 44xx close anyway;
for 1013 (over the plan's connections) it backs off to 2.5 s after each close, so a held refusal
costs it one attempt per `hold` + 2.5 s.

At most `max_held` sockets are held at once per node (each costs a socket and one sleeping task);
past that a refusal closes at once, as before. Refusal log lines are rate limited per (customer,
code): the first in a window is written, the rest are counted into the next line's `suppressed`.

A frame over the hard limit is refused with 1009 and a reason; the same client (customer, doc and
address) sending one again within `repeat_window` is closed with 4413 instead, which y-websocket
3.x takes as final (4400-4499) instead of re-uploading the same frame forever.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import structlog

log = structlog.get_logger("sync_server.sync.endpoint")

LOG_WINDOW = 10.0  # seconds: one refusal line per (customer, code) per window
MAX_KEYS = 10_000  # bound of the rate limiter's and the too-big memory's entries


class Refusals:
    def __init__(self, *, hold: float, max_held: int, repeat_window: float = 600.0) -> None:
        self.hold_seconds = hold
        self.max_held = max_held
        self.repeat_window = repeat_window
        self.held = 0
        self.refused = 0  # refusals since start (operator counter)
        self._lines: OrderedDict[tuple[str, int], list[float]] = OrderedDict()  # key -> [window start, suppressed]
        self._too_big: OrderedDict[tuple[str, str, str], float] = OrderedDict()  # client -> last refusal

    def log_refused(self, slug: str, doc: str, code: int, reason: str) -> None:
        self.refused += 1
        key = (slug, code)
        now = time.monotonic()
        entry = self._lines.get(key)
        if entry is not None and now - entry[0] < LOG_WINDOW:
            entry[1] += 1
            return
        suppressed = int(entry[1]) if entry is not None else 0
        self._lines[key] = [now, 0]
        self._lines.move_to_end(key)
        if len(self._lines) > MAX_KEYS:
            self._lines.popitem(last=False)
        log.info("sync_refused", customer_slug=slug, room=doc, code=code, reason=reason, suppressed=suppressed)

    async def hold(self, receive) -> bool:
        """Hold a refused socket open for `hold` seconds (dropping what the peer sends), unless
        `max_held` are held already. False when the peer left meanwhile (nothing left to close)."""
        if self.hold_seconds <= 0 or self.held >= self.max_held:
            return True
        self.held += 1
        try:
            await asyncio.wait_for(_drop_until_gone(receive), self.hold_seconds)
        except TimeoutError:
            return True
        except _Gone:
            return False
        finally:
            self.held -= 1
        return True

    def too_big_again(self, customer_id: str, doc: str, peer: str) -> bool:
        """Record a too-big refusal of this client; True when it had one within repeat_window."""
        key = (customer_id, doc, peer)
        now = time.monotonic()
        last = self._too_big.pop(key, None)
        self._too_big[key] = now
        if len(self._too_big) > MAX_KEYS:
            self._too_big.popitem(last=False)
        return last is not None and now - last < self.repeat_window

    def status(self) -> dict[str, int]:
        return {"held": self.held, "max_held": self.max_held, "refused": self.refused}


async def _drop_until_gone(receive) -> None:
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            raise _Gone


class _Gone(Exception):
    pass
