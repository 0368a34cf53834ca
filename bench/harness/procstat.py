"""What the kernel says about a process and the machine (Linux /proc): RSS, CPU time, hardware."""

from __future__ import annotations

import os
import platform
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def rss_bytes(pid: int) -> int:
    """Resident set size now."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def backend_cpu_seconds(database: str) -> float:
    """CPU time of the PostgreSQL backends now serving `database` (their process title names it).
    Backends that exited are not counted; the pools of a running server keep theirs."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if title.startswith("postgres: ") and f" {database} " in title:
                total += cpu_seconds(int(proc.name))
        except OSError:
            continue
    return total


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0)
    load = os.getloadavg()
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "load average at start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }
