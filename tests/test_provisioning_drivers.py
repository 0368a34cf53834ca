"""Deployments through the flyio and hetzner drivers against a local HTTP server that checks every
request; provisioning failures roll back and leave the deployment `failed` with its events."""

from __future__ import annotations

import asyncio

import pytest

from storage import deployments as store
from sync_server.config import Settings
from sync_server.domain.provisioning import deployments, drivers

from .support import cloud_api, tenants
from .support.runtime import provisioning_runtime


async def _settled(rt, dep_id):
    for _ in range(400):
        row = await store.get(rt.db, dep_id)
        if row["status"] != "provisioning":
            return dict(row)
        await asyncio.sleep(0.05)
    raise AssertionError("still provisioning")


async def test_flyio_builds_app_volume_machine_then_decommission_deletes_them(database_url, tmp_path, pg_admin_url):
    with cloud_api.RecordingApi(cloud_api.fly()) as api:
        async with provisioning_runtime(
            database_url, tmp_path, pg_admin_url, FLY_API_TOKEN="fly-secret", FLY_API_URL=api.url, FLY_ORG="acme-org"
        ) as rt:
            cid = await tenants.seed_customer(database_url, gps_rows=1)
            dep = await deployments.create(
                rt,
                customer_id=cid,
                mode="single_tenant",
                infrastructure="flyio",
                region="fra",
                config={"name": "acme-db", "volume_gb": 20},
            )
            done = await _settled(rt, dep["id"])
            assert done["status"] == "active", done["error"]
            assert api.calls() == [
                ("POST", "/v1/apps"),
                ("POST", "/v1/apps/acme-db/volumes"),
                ("POST", "/v1/apps/acme-db/machines"),
            ]
            assert all(r["authorization"] == "Bearer fly-secret" for r in api.requests)
            app, volume, machine = (r["body"] for r in api.requests)
            assert app == {"app_name": "acme-db", "org_slug": "acme-org"}
            assert volume["region"] == "fra" and volume["size_gb"] == 20
            cfg = machine["config"]
            assert machine["region"] == "fra" and cfg["mounts"] == [{"volume": "vol_123", "path": "/data"}]
            assert cfg["image"].startswith("postgres:") and cfg["env"]["POSTGRES_PASSWORD"]
            assert done["provisioned_url"].endswith("@acme-db.flycast:5432/webhost")
            assert done["database_url"] is None  # provisioned, not serving until a tenant migration
            assert "password" not in deployments.public(done)["config"]
            assert "***" in deployments.public(done)["provisioned_url"]
            gone = await deployments.decommission(rt, dep["id"])
            assert gone["status"] == "decommissioned"
            assert api.calls()[3:] == [
                ("DELETE", "/v1/apps/acme-db/machines/m_456?force=true"),
                ("DELETE", "/v1/apps/acme-db/volumes/vol_123"),
                ("DELETE", "/v1/apps/acme-db"),
            ]


async def test_flyio_failure_rolls_back_and_records_the_error(database_url, tmp_path, pg_admin_url):
    with cloud_api.RecordingApi(cloud_api.fly(fail_machine=True)) as api:
        async with provisioning_runtime(
            database_url, tmp_path, pg_admin_url, FLY_API_TOKEN="t", FLY_API_URL=api.url
        ) as rt:
            cid = await tenants.seed_customer(database_url, gps_rows=1)
            dep = await deployments.create(
                rt, customer_id=cid, mode="single_tenant", infrastructure="flyio", config={"name": "acme-db"}
            )
            done = await _settled(rt, dep["id"])
            assert done["status"] == "failed" and "no capacity" in done["error"]
            # what was made is removed: the volume and the app (no half-provisioned state)
            assert ("DELETE", "/v1/apps/acme-db/volumes/vol_123") in api.calls()
            assert ("DELETE", "/v1/apps/acme-db") in api.calls()
            events = await store.events(rt.db, cid, dep["id"])
            failed = [e for e in events if e["status"] == "failed"]
            assert failed[0]["step"] == "provision" and "HTTP 422" in failed[0]["error"]
            assert (await rt.registry.for_customer(cid)) is rt.registry.shared


async def test_hetzner_builds_firewall_and_server(database_url, tmp_path, pg_admin_url):
    with cloud_api.RecordingApi(cloud_api.hetzner()) as api:
        async with provisioning_runtime(
            database_url, tmp_path, pg_admin_url, HCLOUD_TOKEN="hz-secret", HCLOUD_API_URL=api.url
        ) as rt:
            cid = await tenants.seed_customer(database_url, gps_rows=1)
            dep = await deployments.create(
                rt,
                customer_id=cid,
                mode="single_tenant",
                infrastructure="hetzner",
                region="nbg1",
                config={"name": "acme", "allowed_ips": ["198.51.100.0/24"]},
            )
            done = await _settled(rt, dep["id"])
            assert done["status"] == "active", done["error"]
            assert api.calls() == [("POST", "/firewalls"), ("POST", "/servers")]
            assert all(r["authorization"] == "Bearer hz-secret" for r in api.requests)
            fw, server = (r["body"] for r in api.requests)
            assert {
                "direction": "in",
                "protocol": "tcp",
                "port": "5432",
                "source_ips": ["198.51.100.0/24"],
                "description": "PostgreSQL",
            } in fw["rules"]
            assert server["location"] == "nbg1" and server["firewalls"] == [{"firewall": 38}]
            assert server["server_type"] and server["image"] and "postgresql" in server["user_data"]
            assert "@203.0.113.7:5432/" in done["provisioned_url"]
            await deployments.decommission(rt, dep["id"])
            assert api.calls()[2:] == [("DELETE", "/servers/42"), ("DELETE", "/firewalls/38")]


@pytest.mark.parametrize("infra, env", [("flyio", "FLY_API_TOKEN"), ("hetzner", "HCLOUD_TOKEN")])
async def test_cloud_driver_without_token_refuses_clearly(database_url, tmp_path, pg_admin_url, infra, env):
    with pytest.raises(drivers.DriverNotConfigured, match=env):
        drivers.driver_for(infra, Settings.from_env({"DATABASE_URL": database_url})).check_configured()
    async with provisioning_runtime(database_url, tmp_path, pg_admin_url) as rt:
        cid = await tenants.seed_customer(database_url, gps_rows=1)
        with pytest.raises(deployments.DeploymentError) as info:
            await deployments.create(rt, customer_id=cid, mode="single_tenant", infrastructure=infra)
        assert info.value.status == 422 and info.value.code == "driver_not_configured" and env in info.value.message
        assert await store.list_all(rt.db, customer_id=cid) == []


async def test_local_deployment_one_active_per_customer_and_resume_after_crash(database_url, tmp_path, pg_admin_url):
    async with provisioning_runtime(database_url, tmp_path, pg_admin_url, keep_databases=True) as rt:
        cid = await tenants.seed_customer(database_url, gps_rows=1)
        dep = await deployments.create(rt, customer_id=cid, mode="single_tenant", infrastructure="local")
        with pytest.raises(deployments.DeploymentError) as info:
            await deployments.create(rt, customer_id=cid, mode="single_tenant", infrastructure="local")
        assert info.value.status == 409
        done = await _settled(rt, dep["id"])
        assert done["status"] == "active" and done["provisioned_url"] and done["config"]["database_created"]
        # a crash mid-job: the row says provisioning and the database exists (recorded as ours);
        # on the next start the job resumes, skips CREATE DATABASE and finishes
        await store.update(
            rt.db,
            dep["id"],
            cid,
            status="provisioning",
            provisioned_url=None,
            config={**done["config"], "database_created": False},
        )
    async with provisioning_runtime(database_url, tmp_path, pg_admin_url) as rt:
        resumed = await _settled(rt, dep["id"])
        assert resumed["status"] == "active" and resumed["provisioned_url"] == done["provisioned_url"]
        steps = [(e["step"], e["status"]) for e in await store.events(rt.db, cid, dep["id"])]
        assert ("resume", "started") in steps and steps.count(("create_database", "succeeded")) == 2
        assert steps.count(("migrate_database", "succeeded")) == 2
        gone = await deployments.decommission(rt, dep["id"])
        assert gone["status"] == "decommissioned"


async def test_plan_change_records_a_new_recommendation(database_url, tmp_path, pg_admin_url):
    from sync_server.domain.billing import subscriptions

    async with provisioning_runtime(database_url, tmp_path, pg_admin_url) as rt:
        cid = await tenants.seed_customer(database_url, gps_rows=1, plan="hobby")
        await subscriptions.change_plan(rt, cid, "professional")
        recs = await store.recommendations(rt.db, cid)
        assert [(r["trigger"], r["profile"]["plan"], r["profile"]["vehicles"], r["mode"]) for r in recs] == [
            ("plan_changed", "professional", 3, "multi_tenant")
        ]
        await subscriptions.change_plan(rt, cid, "professional")  # no change, no new evaluation
        assert len(await store.recommendations(rt.db, cid)) == 1
