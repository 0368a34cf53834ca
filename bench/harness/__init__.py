"""The benchmark harness: servers under test, JS load-client processes, scenarios, the report.

`bench/run.py` is the entry point (`make bench`). Scenarios live in `harness/scenarios/`, one
module each, and add themselves to the registry there; a new one needs no other edit.
"""
