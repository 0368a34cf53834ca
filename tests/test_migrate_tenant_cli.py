"""How `webhost-sync migrate-tenant` draws a migration's progress: a bar redrawn in place on a
terminal, plain lines elsewhere (the real server run is in test_provisioning_api)."""

from __future__ import annotations

import io

from sync_server.node.migrate_tenant_cli import Progress


def _mig(status="running", copied=False, table=None, **tables):
    rows = [{"table": name, "done": done, "total": total} for name, (done, total) in tables.items()]
    return {
        "status": status,
        "progress": {
            "done": sum(r["done"] for r in rows),
            "total": 10_010,
            "table": table,
            "copied": copied,
            "tables": rows,
        },
    }


STEPS = [
    {"status": "running", "progress": {"done": 0, "total": None, "table": None, "copied": False, "tables": []}},
    _mig(table="vehicles", vehicles=(10, 10), gps_positions=(0, 10_000)),
    _mig(table="gps_positions", vehicles=(10, 10), gps_positions=(5_000, 10_000)),
    _mig(table="gps_positions", vehicles=(10, 10), gps_positions=(5_000, 10_000)),  # nothing new
    _mig(table="gps_positions", copied=True, vehicles=(10, 10), gps_positions=(10_000, 10_000)),
    _mig(status="switched", copied=True, vehicles=(10, 10), gps_positions=(10_000, 10_000)),
]


def _draw(tty: bool) -> str:
    out = io.StringIO()
    progress = Progress(out, tty)
    for mig in STEPS:
        progress.update(mig)
    progress.finish()
    return out.getvalue()


def test_plain_lines_when_not_a_terminal():
    text = _draw(tty=False)
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines() == [
        "copying 10,010 rows in 2 tables",
        "copy vehicles: 10/10 rows (10/10,010 in all, 100.0% of the table)",
        "copy gps_positions: 5,000/10,000 rows (5,010/10,010 in all, 50.0% of the table)",
        "copy gps_positions: 10,000/10,000 rows (10,010/10,010 in all, 100.0% of the table)",
        "copied 10,010 rows; catching up, verifying and switching (writes pause now)",
    ]


def test_a_bar_redrawn_in_place_on_a_terminal():
    text = _draw(tty=True)
    frames = [f for f in text.split("\r\x1b[K") if f]
    assert "[###############---------------]  50.0%  5,010/10,010 rows  gps_positions 5,000/10,000" in frames
    finished = [f for f in frames if f.startswith("  ")]
    assert finished == [
        "  vehicles                   [##############################] 100.0%  10/10 rows\n",
        "  gps_positions              [##############################] 100.0%  10,000/10,000 rows\n",
    ]
    assert frames[-1].startswith("[##############################] 100.0%  10,010/10,010 rows  switched")
    assert text.endswith("\n")
