"""The decision engine: from a customer profile, recommend a deployment mode, an infrastructure and
a plan tier, with the reason in words. Pure (no I/O), so every branch is unit-tested.

Seed rules and how they combine when several apply (precedence, highest first):

1. Compliance (soc2 or hipaa) -> single_tenant on flyio. A legal requirement is never traded for
   price, so it beats the budget and small-fleet rule; the tier is then at least starter (the
   smallest plan with a dedicated database) and raised by the size rules of step 3.
2. Budget under $50 a month, or at most 5 vehicles -> multi_tenant on hetzner, tier hobby (the
   shared database is what hobby plans run on). Nothing below applies.
3. Otherwise single_tenant, and the tier is the HIGHEST one any of these rules asks for:
   more than 2 regions -> business; latency under 50 ms with more than 5 vehicles -> professional;
   more than 100 vehicles -> business; more than 25 -> professional; else starter.
   Infrastructure (not fixed by the seed rules; our choice): flyio when the customer needs low
   latency (< 50 ms) or more than 2 regions (Fly runs machines near users in many regions),
   otherwise hetzner (cheaper fixed servers).

An unknown budget or latency (None) constrains nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TIERS = ("hobby", "starter", "professional", "business")
STRICT_COMPLIANCE = frozenset({"soc2", "hipaa"})
BUDGET_FLOOR_USD = 50
SMALL_FLEET = 5
LOW_LATENCY_MS = 50
MANY_REGIONS = 2
LARGE_FLEET = 100
MEDIUM_FLEET = 25


@dataclass(frozen=True)
class Profile:
    vehicles: int = 0
    regions: tuple[str, ...] = ()
    compliance: tuple[str, ...] = ()
    latency_ms: int | None = None
    monthly_budget_usd: float | None = None
    plan: str | None = None  # the current plan; reported, it does not change the outcome


@dataclass(frozen=True)
class Recommendation:
    mode: str
    infrastructure: str
    plan: str
    reason: str
    rules: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        out = asdict(self)
        out["rules"] = list(self.rules)
        return out


def _higher(a: str, b: str) -> str:
    return a if TIERS.index(a) >= TIERS.index(b) else b


def _size_tier(p: Profile) -> tuple[str, list[str], list[str]]:
    """(tier, rule ids, reasons) from the size rules of step 3."""
    tier, rules, reasons = "starter", [], []
    if len(p.regions) > MANY_REGIONS:
        tier = _higher(tier, "business")
        rules.append("many_regions")
        reasons.append(f"{len(p.regions)} regions (> {MANY_REGIONS}) need business")
    if p.latency_ms is not None and p.latency_ms < LOW_LATENCY_MS and p.vehicles > SMALL_FLEET:
        tier = _higher(tier, "professional")
        rules.append("low_latency")
        reasons.append(f"latency {p.latency_ms} ms (< {LOW_LATENCY_MS}) with {p.vehicles} vehicles needs professional")
    if p.vehicles > LARGE_FLEET:
        tier = _higher(tier, "business")
        rules.append("large_fleet")
        reasons.append(f"{p.vehicles} vehicles (> {LARGE_FLEET}) need business")
    elif p.vehicles > MEDIUM_FLEET:
        tier = _higher(tier, "professional")
        rules.append("medium_fleet")
        reasons.append(f"{p.vehicles} vehicles (> {MEDIUM_FLEET}) need professional")
    if not rules:
        rules.append("small_dedicated")
        reasons.append(f"{p.vehicles} vehicles fit starter")
    return tier, rules, reasons


def _infrastructure(p: Profile) -> str:
    low_latency = p.latency_ms is not None and p.latency_ms < LOW_LATENCY_MS
    return "flyio" if low_latency or len(p.regions) > MANY_REGIONS else "hetzner"


def recommend(p: Profile) -> Recommendation:
    compliance = sorted(STRICT_COMPLIANCE.intersection(c.lower() for c in p.compliance))
    tier, size_rules, size_reasons = _size_tier(p)
    if compliance:
        reason = f"{'/'.join(compliance)} compliance requires a dedicated database on flyio"
        if p.monthly_budget_usd is not None and p.monthly_budget_usd < BUDGET_FLOOR_USD:
            reason += f" (budget ${p.monthly_budget_usd:g} under ${BUDGET_FLOOR_USD} does not override compliance)"
        return Recommendation(
            "single_tenant", "flyio", tier, reason + "; " + "; ".join(size_reasons), ("compliance", *size_rules)
        )
    cheap = p.monthly_budget_usd is not None and p.monthly_budget_usd < BUDGET_FLOOR_USD
    if cheap or p.vehicles <= SMALL_FLEET:
        why = []
        if cheap:
            why.append(f"budget ${p.monthly_budget_usd:g} is under ${BUDGET_FLOOR_USD}")
        if p.vehicles <= SMALL_FLEET:
            why.append(f"{p.vehicles} vehicles (<= {SMALL_FLEET})")
        rules = (("low_budget",) if cheap else ()) + (("small_fleet",) if p.vehicles <= SMALL_FLEET else ())
        return Recommendation(
            "multi_tenant", "hetzner", "hobby", " and ".join(why) + ": the shared deployment on hetzner fits", rules
        )
    infra = _infrastructure(p)
    return Recommendation(
        "single_tenant", infra, tier, "; ".join(size_reasons) + f"; dedicated database on {infra}", tuple(size_rules)
    )
