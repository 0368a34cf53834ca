"""Merge `TL <ms> <event> <details>` lines of a cold-load bench run's server logs and join.js
stderr files into one timeline per client "go": ms since it, and since the line before.

    .venv/bin/python bench/cold_timeline/merge.py WORK/ours.*.log WORK/join.js.*.stderr
"""

import sys


def main(paths: list[str]) -> None:
    lines = []
    for path in paths:
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("TL "):
                    parts = line.split(None, 3)
                    lines.append((float(parts[1]), parts[2], parts[3].strip() if len(parts) > 3 else ""))
    lines.sort()
    for go, event, _ in lines:
        if event != "client_go":
            continue
        ends = [t for t, e, _ in lines if e == "client_synced" and t > go]
        if not ends:
            continue
        print("---- run")
        previous = go
        for t, e, details in lines:
            if go <= t <= ends[0]:
                print(f"{t - go:8.1f} (+{t - previous:6.1f})  {e:24s} {details}")
                previous = t


if __name__ == "__main__":
    main(sys.argv[1:])
