"""JS load-client processes (bench/clients/*.js): started with arguments, spoken to over stdin
("go" lines, EOF = stop), heard from as one JSON event per stdout line. Every wait is bounded."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
CLIENTS = BENCH / "clients"


class ClientFailed(RuntimeError):
    """The load client reported an error, exited early, or did not answer in time."""


class JsClient:
    def __init__(self, script: str, log_dir: Path, **args) -> None:
        node = shutil.which("node") or "node"
        argv = [node, str(CLIENTS / script)]
        for key, value in args.items():
            if value is not None:
                argv += [f"--{key.replace('_', '-')}", str(value)]
        self.name = f"{script}:{args.get('doc') or args.get('prefix') or ''}"
        self._stderr_path = log_dir / f"{script}.{time.monotonic_ns()}.stderr"
        self._stderr = open(self._stderr_path, "wb")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, cwd=BENCH
        )
        self._events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self._events.put(json.loads(line))
            except json.JSONDecodeError:
                self._events.put({"event": "noise", "text": line[:200]})
        self._events.put({"event": "exit"})

    def wait(self, event: str, timeout: float) -> dict:
        """The next event named `event`; ClientFailed on an error event, exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClientFailed(f"{self.name}: no {event!r} within {timeout:.0f}s")
            try:
                got = self._events.get(timeout=remaining)
            except queue.Empty:
                continue
            if got["event"] == event:
                return got
            if got["event"] == "error":
                raise ClientFailed(f"{self.name}: {got.get('error', '')[:500]}")
            if got["event"] == "exit":
                code = self.proc.wait(5)
                said = self._stderr_path.read_text(errors="replace")[-3000:]
                raise ClientFailed(f"{self.name}: exited with {code} before {event!r}; its stderr:\n{said}")

    def say(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 20.0) -> None:
        """Close stdin (the stop signal), then wait; kill if it does not leave in time."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._stderr.close()


def shares(total: int, parts: int) -> list[int]:
    """`total` clients split over `parts` processes as evenly as counts allow (no empty share)."""
    return [n for n in (total // parts + (1 if k < total % parts else 0) for k in range(parts)) if n]


def stop_all(clients: list[JsClient]) -> None:
    for client in clients:
        try:
            client.proc.stdin.close()
        except OSError:
            pass
    for client in clients:
        client.stop()
