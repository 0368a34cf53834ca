"""The scenario registry. A scenario is a module here that builds a `Scenario` and passes it to
`register`; `load()` imports every module listed in ORDER (the report keeps that order).
GPS ingestion (issue 5), REST latency (issue 4) and cross-node relay (issue 7) are placeholders
their issues replace: keep the key, set `placeholder=None`, implement `run`."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..servers import OURS, REFERENCE, Server

ORDER = ("relay", "fanout", "idle", "join_storm", "cold_load", "gps_ingest", "rest_latency", "cross_node")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: str = "lower"  # "higher", "lower" or "" (context only, no ratio)


@dataclass(frozen=True)
class Target:
    """A goal stated in DESIGN.md or an issue. `ratio`: ours vs the reference in the metric's better
    direction (1.0 = equal); `at_least` / `at_most`: an absolute bound on our median."""
    metric: str
    text: str
    ratio: float | None = None
    at_least: float | None = None
    at_most: float | None = None


@dataclass
class RunContext:
    mode: str  # "full" or "smoke"
    log_dir: Path
    database: object | None  # harness.database.BenchDatabase for our side
    cache: dict = field(default_factory=dict)


@dataclass
class Scenario:
    key: str
    title: str
    issue: str
    metrics: list[Metric]
    params: dict[str, dict]  # mode -> counts; the report prints them
    run: Callable[[RunContext, Server, int], dict[str, float]] | None = None
    sides: tuple[str, ...] = (OURS, REFERENCE)
    targets: list[Target] = field(default_factory=list)
    notes: str = ""
    placeholder: str | None = None  # why it is not measured yet

    def counts(self, mode: str) -> dict:
        return self.params[mode]


REGISTRY: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    REGISTRY[scenario.key] = scenario
    return scenario


def load() -> dict[str, Scenario]:
    for name in ORDER:
        importlib.import_module(f"{__name__}.{name}")
    return REGISTRY
