"""A memory guard for the server under test: the bench shares its machine, so a server whose RSS
passes the cap is killed (SIGKILL) before the kernel's OOM killer picks a victim, and the run is
recorded as failed with that reason. (Seen: a 100k-update cold load took our server to 23 GB.)"""

from __future__ import annotations

import os
import signal
import threading

from . import procstat

DEFAULT_CAP = 4 * 2**30


class MemoryGuard:
    def __init__(self, pid: int, cap_bytes: int = DEFAULT_CAP, every: float = 0.2) -> None:
        self.pid = pid
        self.cap = cap_bytes
        self.every = every
        self.fired: str | None = None
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> MemoryGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            try:
                rss = procstat.rss_bytes(self.pid)
            except OSError:
                return  # the process is gone
            self.peak = max(self.peak, rss)
            if rss > self.cap:
                self.fired = (
                    f"server RSS passed {self.cap / 2**30:.0f} GiB ({rss / 2**30:.1f} GiB); killed by the harness"
                )
                os.kill(self.pid, signal.SIGKILL)
                return
