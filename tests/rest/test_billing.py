"""Plans, subscriptions and usage."""

import asyncio
import datetime as dt

from sync_server.domain.billing import plans

from .conftest import bearer, error_of

PLAN = {
    "id": "fleet-xl",
    "name": "Fleet XL",
    "price_cents": 99900,
    "vehicle_limit": 2000,
    "driver_limit": 2000,
    "geofence_limit": 8000,
    "gps_points_per_day": 100_000_000,
    "retention_days": 730,
}


async def test_public_plans_and_operator_crud(api):
    r = await api.get("/api/v1/plans")
    assert r.status_code == 200
    assert [p["id"] for p in (await r.get_json())["data"]] == ["hobby", "starter", "professional", "business"]
    staff, admin = await api.operator("staff"), await api.operator("admin")
    assert (await api.post("/api/v1/plans", json=PLAN)).status_code == 401

    r = await api.post("/api/v1/plans", headers=staff, json={**PLAN, "is_public": False})
    assert r.status_code == 201 and (await r.get_json())["connection_limit"] == 100
    assert (await api.post("/api/v1/plans", headers=staff, json=PLAN)).status_code == 409
    r = await api.post("/api/v1/plans", headers=staff, json={**PLAN, "id": "x", "retention_days": 0})
    assert r.status_code == 422 and (await error_of(r))["details"]["errors"][0]["field"] == "retention_days"
    assert "fleet-xl" not in [p["id"] for p in (await (await api.get("/api/v1/plans")).get_json())["data"]]
    assert (await api.get("/api/v1/plans/fleet-xl")).status_code == 200

    r = await api.patch("/api/v1/plans/fleet-xl", headers=staff, json={"is_public": True, "price_cents": 89900})
    assert r.status_code == 200 and (await r.get_json())["price_cents"] == 89900
    assert "fleet-xl" in [p["id"] for p in (await (await api.get("/api/v1/plans")).get_json())["data"]]
    assert (await api.patch("/api/v1/plans/nope", headers=staff, json={"name": "n"})).status_code == 404

    assert (await api.delete("/api/v1/plans/fleet-xl", headers=staff)).status_code == 403
    assert (await api.delete("/api/v1/plans/fleet-xl", headers=admin)).status_code == 204
    assert (await api.get("/api/v1/plans/fleet-xl")).status_code == 404
    assert (await api.delete("/api/v1/plans/fleet-xl", headers=admin)).status_code == 404
    await api.customer()  # on hobby
    r = await api.delete("/api/v1/plans/hobby", headers=admin)
    assert r.status_code == 409 and (await error_of(r))["code"] == "plan_in_use"


async def test_upgrade_downgrade_cancel(api):
    c = await api.customer(plan_id="hobby")
    for i in range(4):
        r = await api.post("/api/v1/vehicles", headers=c.auth, json={"name": f"v{i}", "vehicle_identifier": f"v{i}"})
        assert r.status_code == 201
    ops = await api.operator()
    await api.post(
        "/api/v1/plans",
        headers=ops,
        json={
            **PLAN,
            "id": "tiny",
            "vehicle_limit": 2,
            "driver_limit": 2,
            "geofence_limit": 2,
            "gps_points_per_day": 10,
        },
    )

    r = await api.post("/api/v1/subscription/change", headers=c.auth, json={"plan_id": "starter"})
    assert r.status_code == 200 and (await r.get_json())["plan_id"] == "starter"
    for i in range(4, 7):  # the new limit applies at once
        assert (
            await api.post("/api/v1/vehicles", headers=c.auth, json={"name": f"v{i}", "vehicle_identifier": f"v{i}"})
        ).status_code == 201

    r = await api.post("/api/v1/subscription/change", headers=c.auth, json={"plan_id": "tiny"})
    assert r.status_code == 409
    err = await error_of(r)
    assert err["code"] == "downgrade_exceeds_limits"
    assert err["details"]["violations"] == [{"resource": "vehicles", "usage": 7, "limit": 2}]
    assert (await (await api.get("/api/v1/subscription", headers=c.auth)).get_json())["plan_id"] == "starter"

    vehicles = (await (await api.get("/api/v1/vehicles", headers=c.auth)).get_json())["data"]
    for v in vehicles[2:]:
        assert (await api.delete(f"/api/v1/vehicles/{v['id']}", headers=c.auth)).status_code == 204
    r = await api.post("/api/v1/subscription/change", headers=c.auth, json={"plan_id": "tiny"})
    assert r.status_code == 200 and (await r.get_json())["plan_id"] == "tiny"
    async with api.runtime.db.tenant(c.id) as conn:  # history kept, one active
        assert await conn.fetchval("SELECT count(*) FROM subscriptions") == 3
        assert await conn.fetchval("SELECT count(*) FROM subscriptions WHERE status = 'active'") == 1

    r = await api.post("/api/v1/subscription/change", headers=c.auth, json={"plan_id": "gold"})
    assert r.status_code == 404
    r = await api.post("/api/v1/subscription/cancel", headers=c.auth)
    body = await r.get_json()
    assert r.status_code == 200 and body["cancel_at_period_end"] is True and body["status"] == "active"

    reader = await api.key(c, ["billing:read"])
    assert (await api.get("/api/v1/subscription", headers=bearer(reader))).status_code == 200
    assert (await api.post("/api/v1/subscription/cancel", headers=bearer(reader))).status_code == 403


async def test_usage(api):
    c = await api.customer(plan_id="starter")
    v = await (
        await api.post("/api/v1/vehicles", headers=c.auth, json={"name": "v", "vehicle_identifier": "v"})
    ).get_json()
    await api.post("/api/v1/drivers", headers=c.auth, json={"name": "d"})
    await api.post(
        "/api/v1/geofences",
        headers=c.auth,
        json={"kind": "circle", "name": "g", "center": {"lat": 1, "lng": 2}, "radius_meters": 50},
    )
    now = dt.datetime.now(dt.UTC)
    db = await api.runtime.registry.for_customer(c.id)
    # The geofence change stamps the fleet document (tracking.event_feed: the dispatcher apps refetch);
    # that server write reaches doc_updates with the next group commit: wait for it, it is storage too.
    server_written = 0
    for _ in range(100):
        async with db.tenant(c.id) as conn:
            server_written = await conn.fetchval(
                "SELECT coalesce(sum(octet_length(update)), 0) FROM doc_updates WHERE customer_id = $1", c.id
            )
        if server_written:
            break
        await asyncio.sleep(0.1)
    assert server_written > 0
    async with db.tenant(c.id) as conn:
        for s in range(3):
            await conn.execute(
                "INSERT INTO gps_positions (customer_id, vehicle_id, time, lat, lng) VALUES ($1, $2, $3, 1, 2)",
                c.id,
                v["id"],
                now - dt.timedelta(seconds=s),
            )
        await conn.execute(
            "INSERT INTO doc_updates (customer_id, doc, update) VALUES ($1, 'fleet', $2)", c.id, b"x" * 100
        )
    r = await api.get("/api/v1/usage", headers=c.auth)
    assert r.status_code == 200
    body = await r.get_json()
    assert body == {
        "plan_id": "starter",
        "vehicles": {"used": 1, "limit": 25},
        "drivers": {"used": 1, "limit": 25},
        "geofences": {"used": 1, "limit": 100},
        "gps_points_today": {"used": 3, "limit": 1250000},
        "connections": {"used": 0, "limit": 250},
        "storage_bytes": 100 + server_written,
        "sync_frames_too_big_today": 0,
    }
    async with db.tenant(c.id) as conn:  # the pipeline's counter wins when it keeps one
        await conn.execute(
            "INSERT INTO usage_metrics (customer_id, time, metric, value) VALUES ($1, $2, $3, 40)",
            c.id,
            now,
            plans.GPS_POINTS_METRIC,
        )
    body = await (await api.get("/api/v1/usage", headers=c.auth)).get_json()
    assert body["gps_points_today"]["used"] == 40
    fleet_only = await api.key(c, ["fleet:read"])
    assert (await api.get("/api/v1/usage", headers=bearer(fleet_only))).status_code == 403


async def test_gps_limit_check_for_the_pipeline(api):
    c = await api.customer(plan_id="hobby")
    limits = await plans.current_limits(api.runtime.db, c.id)
    assert limits.gps_points_per_day == 250_000
    db = await api.runtime.registry.for_customer(c.id)
    async with db.tenant(c.id) as conn:
        assert await plans.check_limit(conn, c.id, "gps_points_per_day", limits, adding=10, current=249_990) == 249_990
        try:
            await plans.check_limit(conn, c.id, "gps_points_per_day", limits, adding=11, current=249_990)
        except plans.PlanLimitReached as exc:
            assert exc.details() == {
                "resource": "gps_points_per_day",
                "limit": 250_000,
                "current": 249_990,
                "plan_id": "hobby",
            }
        else:
            raise AssertionError("limit not enforced")


async def test_a_plan_change_reaches_the_one_plan_limit_cache(api):
    """Tracking, the connection limit and /tracking/usage read one cache (Runtime.plan_limits);
    the plan change of this node drops its entry at once, well before LIMITS_TTL."""
    rt = api.runtime
    c = await api.customer(plan_id="hobby")
    assert rt.tracking.plan_limits is rt.plan_limits
    hobby = await rt.plan_limits.limits(c.id)
    assert hobby.plan_id == "hobby" and rt.plan_limits.cached_customers == 1
    assert (await rt.tracking.limits(c.id)) is hobby  # the same cached entry, no second cache
    r = await api.get("/api/v1/tracking/usage", headers=c.auth)
    assert (await r.get_json())["plan_id"] == "hobby"

    r = await api.post("/api/v1/subscription/change", headers=c.auth, json={"plan_id": "starter"})
    assert r.status_code == 200
    assert rt.plan_limits.cached_customers == 0  # dropped by the "plan_changed" event
    starter = await rt.tracking.limits(c.id)
    assert starter.plan_id == "starter" and starter.gps_points_per_day > hobby.gps_points_per_day
    r = await api.get("/api/v1/tracking/usage", headers=c.auth)
    assert (await r.get_json())["limit"] == starter.gps_points_per_day
    limiter = next(h for h in rt.rooms.hooks if type(h).__name__ == "ConnectionLimit")
    assert await limiter.limit_of(c.id) == starter.connections


async def test_a_fleet_joining_when_the_cached_limits_expire_reads_them_once(api, monkeypatch):
    """The plan-limit cache asks the database once for every caller waiting on one customer; a
    plan change during that read is not overwritten by the answer read before it."""
    rt = api.runtime
    c = await api.customer(plan_id="hobby")
    reads = []
    real = plans.current_limits

    async def counted(db, customer_id):
        reads.append(customer_id)
        return await real(db, customer_id)

    monkeypatch.setattr(plans, "current_limits", counted)
    rt.plan_limits.forget(c.id)
    answers = await asyncio.gather(*(rt.plan_limits.limits(c.id) for _ in range(50)))
    assert len(reads) == 1 and {a.plan_id for a in answers} == {"hobby"} and rt.plan_limits.cached_customers == 1

    rt.plan_limits.forget(c.id)
    asking = asyncio.ensure_future(rt.plan_limits.limits(c.id))
    await asyncio.sleep(0)  # the read has begun
    rt.plan_limits.forget(c.id)  # a plan change while it runs
    assert (await asking).plan_id == "hobby" and rt.plan_limits.cached_customers == 0
    await rt.plan_limits.limits(c.id)
    assert len(reads) == 3  # the read begun before the change was not shared with a later asker
