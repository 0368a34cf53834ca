"""One writer, N observers in one room: the common body of the relay and fan-out scenarios.
Delivery latency = an observer's arrival time minus the writer's send time of that entry, both on
the machine-wide monotonic clock."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .clients import JsClient, shares, stop_all
from .servers import Server


@dataclass
class Delivery:
    items: int
    observers: int
    received: int  # deliveries counted over all observers
    latencies_ms: list[float]
    seconds: float  # first send to last arrival
    server_cpu_s: float  # server CPU from writer start to the last observer done
    db_cpu_s: float | None  # its PostgreSQL backends' CPU over the same window (None: no database)


def deliver(
    server: Server, log_dir: Path, *, doc: str, observers: int, processes: int, items: int, rate: float, timeout: float
) -> Delivery:
    clients: list[JsClient] = []
    try:
        watchers = [
            JsClient(
                "observe.js",
                log_dir,
                server=server.ws_base,
                doc=doc,
                token=server.token,
                clients=n,
                items=items,
                timeout=timeout,
                parallel=50,
            )
            for n in shares(observers, processes)
        ]
        clients += watchers
        synced = sum(w.wait("ready", timeout)["synced"] for w in watchers)
        cpu0, db0 = server.cpu_seconds()
        writer = JsClient(
            "write.js",
            log_dir,
            server=server.ws_base,
            doc=doc,
            token=server.token,
            items=items,
            rate=rate,
            timeout=timeout,
        )
        clients.append(writer)
        written = writer.wait("done", timeout + 30)
        seen = [w.wait("done", timeout + 30) for w in watchers]
        cpu1, db1 = server.cpu_seconds()
    finally:
        stop_all(clients)
    sends = written["sends"]
    latencies = []
    last = 0.0
    for done in seen:
        arrivals = done["arrivals"]
        for k in range(0, len(arrivals), 2):
            latencies.append(arrivals[k + 1] - sends[arrivals[k]])
        last = max(last, done["last_arrival"])
    return Delivery(
        items=items,
        observers=synced,
        received=len(latencies),
        latencies_ms=latencies,
        seconds=(last - written["first"]) / 1000 if latencies else 0.0,
        server_cpu_s=cpu1 - cpu0,
        db_cpu_s=None if db0 is None else db1 - db0,
    )
