"""The decision engine, one row per branch of the seed rules and of their precedence."""

import pytest

from sync_server.domain.provisioning.decision import Profile, recommend

ROWS = [
    # id, profile, mode, infrastructure, plan, rules
    (
        "budget under $50 -> shared hetzner",
        Profile(vehicles=40, monthly_budget_usd=49.99),
        "multi_tenant",
        "hetzner",
        "hobby",
        ("low_budget",),
    ),
    (
        "budget exactly $50 is not under",
        Profile(vehicles=6, monthly_budget_usd=50),
        "single_tenant",
        "hetzner",
        "starter",
        ("small_dedicated",),
    ),
    ("5 vehicles -> shared hetzner", Profile(vehicles=5), "multi_tenant", "hetzner", "hobby", ("small_fleet",)),
    (
        "0 vehicles -> shared hetzner",
        Profile(vehicles=0, monthly_budget_usd=1000),
        "multi_tenant",
        "hetzner",
        "hobby",
        ("small_fleet",),
    ),
    (
        "cheap and small: both reasons",
        Profile(vehicles=2, monthly_budget_usd=10),
        "multi_tenant",
        "hetzner",
        "hobby",
        ("low_budget", "small_fleet"),
    ),
    ("6 vehicles -> starter", Profile(vehicles=6), "single_tenant", "hetzner", "starter", ("small_dedicated",)),
    ("25 vehicles -> starter", Profile(vehicles=25), "single_tenant", "hetzner", "starter", ("small_dedicated",)),
    (
        "26 vehicles -> professional",
        Profile(vehicles=26),
        "single_tenant",
        "hetzner",
        "professional",
        ("medium_fleet",),
    ),
    (
        "100 vehicles -> professional",
        Profile(vehicles=100),
        "single_tenant",
        "hetzner",
        "professional",
        ("medium_fleet",),
    ),
    ("101 vehicles -> business", Profile(vehicles=101), "single_tenant", "hetzner", "business", ("large_fleet",)),
    (
        "soc2 -> dedicated flyio",
        Profile(vehicles=10, compliance=("soc2",)),
        "single_tenant",
        "flyio",
        "starter",
        ("compliance", "small_dedicated"),
    ),
    (
        "hipaa (any case) -> dedicated flyio",
        Profile(vehicles=30, compliance=("HIPAA",)),
        "single_tenant",
        "flyio",
        "professional",
        ("compliance", "medium_fleet"),
    ),
    (
        "compliance beats low budget and small fleet",
        Profile(vehicles=2, compliance=("soc2",), monthly_budget_usd=20),
        "single_tenant",
        "flyio",
        "starter",
        ("compliance", "small_dedicated"),
    ),
    (
        "other compliance (gdpr) is not a strict rule",
        Profile(vehicles=3, compliance=("gdpr",)),
        "multi_tenant",
        "hetzner",
        "hobby",
        ("small_fleet",),
    ),
    (
        "latency 49 ms with 6 vehicles -> professional on flyio",
        Profile(vehicles=6, latency_ms=49),
        "single_tenant",
        "flyio",
        "professional",
        ("low_latency",),
    ),
    (
        "latency 50 ms is not under",
        Profile(vehicles=6, latency_ms=50),
        "single_tenant",
        "hetzner",
        "starter",
        ("small_dedicated",),
    ),
    (
        "low latency with <= 5 vehicles stays shared",
        Profile(vehicles=5, latency_ms=10),
        "multi_tenant",
        "hetzner",
        "hobby",
        ("small_fleet",),
    ),
    (
        "3 regions -> business on flyio",
        Profile(vehicles=10, regions=("eu", "us", "ap")),
        "single_tenant",
        "flyio",
        "business",
        ("many_regions",),
    ),
    (
        "2 regions is not many",
        Profile(vehicles=10, regions=("eu", "us")),
        "single_tenant",
        "hetzner",
        "starter",
        ("small_dedicated",),
    ),
    (
        "overlap: highest tier wins (latency professional + regions business)",
        Profile(vehicles=30, latency_ms=20, regions=("a", "b", "c")),
        "single_tenant",
        "flyio",
        "business",
        ("many_regions", "low_latency", "medium_fleet"),
    ),
    (
        "overlap: large fleet business beats latency professional",
        Profile(vehicles=500, latency_ms=20),
        "single_tenant",
        "flyio",
        "business",
        ("low_latency", "large_fleet"),
    ),
    (
        "compliance with many regions -> business on flyio",
        Profile(vehicles=8, compliance=("soc2",), regions=("a", "b", "c")),
        "single_tenant",
        "flyio",
        "business",
        ("compliance", "many_regions"),
    ),
    (
        "unknown budget and latency constrain nothing",
        Profile(vehicles=7, plan="hobby"),
        "single_tenant",
        "hetzner",
        "starter",
        ("small_dedicated",),
    ),
]


@pytest.mark.parametrize("profile, mode, infra, plan, rules", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_decision_table(profile, mode, infra, plan, rules):
    rec = recommend(profile)
    assert (rec.mode, rec.infrastructure, rec.plan, rec.rules) == (mode, infra, plan, rules)
    assert rec.reason


def test_reason_names_the_deciding_facts():
    rec = recommend(Profile(vehicles=2, compliance=("soc2",), monthly_budget_usd=20))
    assert "soc2" in rec.reason and "does not override" in rec.reason
    assert "49.5" in recommend(Profile(vehicles=40, monthly_budget_usd=49.5)).reason
    assert recommend(Profile(vehicles=101)).as_dict()["rules"] == ["large_fleet"]
