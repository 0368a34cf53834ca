"""The decision engine applied to a stored customer, with every result recorded (recommendations).

REST's plan-change code announces `runtime.publish("plan_changed", customer_id=..., plan_id=...)`;
`install` subscribes `on_plan_changed` to it, so every plan change is evaluated again and recorded.
"""

from __future__ import annotations

import dataclasses

from storage import deployments as store
from sync_server.domain.provisioning.decision import Profile, recommend


def profile_from(row, vehicles: int, plan: str | None = None) -> Profile:
    meta = row["metadata"] or {}
    latency = meta.get("latency_ms")
    budget = meta.get("monthly_budget_usd")
    return Profile(
        vehicles=vehicles,
        regions=tuple(row["regions"] or ()),
        compliance=tuple(row["compliance"] or ()),
        latency_ms=int(latency) if latency is not None else None,
        monthly_budget_usd=float(budget) if budget is not None else None,
        plan=plan or row["plan"],
    )


async def stored_profile(rt, customer_id, plan: str | None = None) -> Profile | None:
    row = await store.customer_profile(rt.db, customer_id)
    if row is None:
        return None
    vehicles = await store.vehicle_count(await rt.registry.for_customer(customer_id), customer_id)
    return profile_from(row, vehicles, plan)


async def record(rt, customer_id, profile: Profile, trigger: str) -> dict:
    rec = recommend(profile).as_dict()
    row = await store.record_recommendation(
        rt.db, customer_id, trigger=trigger, profile=dataclasses.asdict(profile), rec=rec
    )
    return {
        **rec,
        "id": row["id"],
        "customer_id": str(customer_id),
        "trigger": trigger,
        "profile": dataclasses.asdict(profile),
        "created_at": row["created_at"].isoformat(),
    }


async def reevaluate(rt, customer_id, trigger: str = "plan_changed", plan: str | None = None) -> dict | None:
    """Evaluate the stored customer again and record the result (None: no such customer)."""
    profile = await stored_profile(rt, customer_id, plan)
    if profile is None:
        return None
    return await record(rt, customer_id, profile, trigger)


def on_plan_changed(rt):
    async def listener(customer_id, plan_id: str | None = None, **_ignored) -> None:
        await reevaluate(rt, customer_id, "plan_changed", plan_id)

    return listener
