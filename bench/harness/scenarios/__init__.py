"""The scenario registry. A scenario is a module here that builds a `Scenario` and passes it to
`register`; `load()` imports every module listed in ORDER (the report keeps that order).
A scenario whose standalone script starts its own servers (GPS ingestion, REST latency, cross-node
relay) sets `self_hosted`: its `run` gets no server from the harness (None), and `profile` (if set)
profiles it its own way."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    self_hosted: bool = False  # the scenario starts its own server(s): `run` gets server=None
    profile: Callable[[RunContext], str] | None = None  # a missed target's profile, when not the default

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
