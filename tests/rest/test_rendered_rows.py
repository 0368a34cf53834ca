"""Lists and vehicle creation answer with JSON that PostgreSQL wrote (storage/json_rows.py,
api/rendered.py): it must be what the response models gave before, byte for byte (jsonb columns:
the same value, PostgreSQL's spacing), page by page, for any text a customer can store."""

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, Field, field_serializer

from api import pagination
from api.fleet import Driver, Vehicle, VehicleWithSecret
from api.rendered import fields_of
from api.schemas import Page
from storage import drivers as driver_store
from storage import vehicles as vehicle_store
from storage.json_rows import object_sql

# What customers may put in text: quotes, backslashes, every control character PostgreSQL and
# pydantic escape (and DEL, which neither does), line and paragraph separators, markup, astral plane.
HOSTILE = [
    'quote " and \\ backslash',
    "".join(chr(c) for c in range(1, 32)) + "\x7f",
    "\u2028\u2029 </script><!-- ",
    "naïve 東京 🚚 \U0010fffd",
    "'; DROP TABLE vehicles; --",
]

# Stored metadata: nested, unicode keys, numbers PostgreSQL prints its own way (the value stays).
METADATA = {
    "ключ": {"deep": [1, 2.5, -0.125, 1e-7, 10**20, True, None, 'x"y']},
    "a": 1.0,
    "": "",
}


async def _pydantic_page(db, customer_id, store, limit: int, after, **filters) -> tuple[bytes, Any]:
    """The page as the model rendering gave it (rows decoded by asyncpg, validated and dumped)."""
    rows = await store.list_page(db, customer_id, after=after, limit=limit, **filters)
    body = pagination.page(rows, limit)
    model = Page[Vehicle] if store is vehicle_store else Page[Driver]
    return model.model_validate(body).model_dump_json().encode(), body["next_cursor"]


async def _same_times_as_edge_cases(db, customer_id, table: str) -> None:
    """Whole seconds, a microsecond's leading zeros, and a date before 1970 in the stored timestamps."""
    moments = ["2026-01-02 03:04:05+00", "2026-01-02 03:04:05.000005+00", "1969-12-31 23:59:59.5-05", None]
    async with db.tenant(customer_id) as conn:
        ids = [r["id"] for r in await conn.fetch(f"SELECT id FROM {table} ORDER BY created_at, id")]
        for row_id, moment in zip(ids, moments, strict=False):
            if moment is not None:
                await conn.execute(
                    f"UPDATE {table} SET created_at = $2::timestamptz, updated_at = $2::timestamptz WHERE id = $1",
                    row_id,
                    dt.datetime.fromisoformat(moment.replace(" ", "T")),
                )


async def _pages(api, customer, path: str, query: dict) -> list[bytes]:
    pages, cursor = [], None
    while True:
        r = await api.get(path, headers=customer.auth, query_string={**query, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        pages.append(await r.get_data())
        cursor = json.loads(pages[-1])["next_cursor"]
        if cursor is None:
            return pages


async def test_vehicle_pages_are_the_model_rendering_byte_for_byte(api):
    c = await api.customer(plan_id="starter")
    for i, text in enumerate(HOSTILE):
        r = await api.post("/api/v1/vehicles", headers=c.auth, json={"name": text, "vehicle_identifier": f"{text}-{i}"})
        assert r.status_code == 201, await r.get_data()
    db = await api.runtime.registry.for_customer(c.id)
    await _same_times_as_edge_cases(db, c.id, "vehicles")

    pages = await _pages(api, c, "/api/v1/vehicles", {"limit": 2})
    assert len(pages) == 3
    after: Any = (None, None)
    for got in pages:
        want, cursor = await _pydantic_page(db, c.id, vehicle_store, 2, after, vehicle_type=None)
        assert got == want
        after = pagination.decode(cursor)
    # whatever the session's time zone (the server's or the role's setting), UTC as pydantic writes it
    async with db.tenant(c.id) as conn:
        await conn.execute("SET LOCAL TimeZone = 'Asia/Kathmandu'")
        rendered = [
            r["json"]
            for r in await conn.fetch(
                f"SELECT {object_sql(fields_of(Vehicle), 'v')} AS json FROM vehicles v ORDER BY created_at, id"
            )
        ]
    assert rendered == [
        json.dumps(v, ensure_ascii=False, separators=(",", ":")) for p in pages for v in json.loads(p)["data"]
    ]
    names = [v["name"] for p in pages for v in json.loads(p)["data"]]
    assert sorted(names) == sorted(HOSTILE)
    # the filter, an empty page
    assert await _pages(api, c, "/api/v1/vehicles", {"vehicle_type": "truck"}) == [b'{"data":[],"next_cursor":null}']
    want, _ = await _pydantic_page(db, c.id, vehicle_store, 50, (None, None), vehicle_type="truck")
    assert want == b'{"data":[],"next_cursor":null}'


async def test_jsonb_keeps_its_value_and_a_created_vehicle_matches_the_model(api):
    c = await api.customer()
    r = await api.post(
        "/api/v1/vehicles",
        headers=c.auth,
        json={"name": "Van", "vehicle_identifier": "B-1", "vehicle_type": "van", "metadata": METADATA},
    )
    assert r.status_code == 201
    created = await r.get_data()
    body = json.loads(created)
    db = await api.runtime.registry.for_customer(c.id)
    async with db.tenant(c.id) as conn:
        row = await vehicle_store.get(conn, uuid.UUID(body["id"]))
    want = VehicleWithSecret.model_validate({**dict(row), "device_secret": body["device_secret"]}).model_dump_json()
    # the same value, exactly (numbers as written: no float rounding on either side) ...
    assert json.loads(created, parse_float=Decimal) == json.loads(want, parse_float=Decimal)
    # ... and byte for byte once the jsonb column is set aside
    assert _without_metadata(created) == _without_metadata(want.encode())
    listed = (await _pages(api, c, "/api/v1/vehicles", {}))[0]
    want_page, _ = await _pydantic_page(db, c.id, vehicle_store, 50, (None, None), vehicle_type=None)
    assert json.loads(listed, parse_float=Decimal) == json.loads(want_page, parse_float=Decimal)
    assert json.loads(listed)["data"][0]["metadata"] == METADATA
    # VehicleWithSecret is Vehicle's fields and then the secret: what create_vehicle splices in
    assert fields_of(VehicleWithSecret)[:-1] == fields_of(Vehicle)
    assert fields_of(VehicleWithSecret)[-1].name == "device_secret"


def _without_metadata(body: bytes) -> bytes:
    """The body with the metadata object (PostgreSQL's or pydantic's spacing) cut out."""
    start = body.index(b'"metadata":') + len(b'"metadata":')
    end = body.index(b',"created_at":', start)
    return body[:start] + body[end:]


async def test_driver_pages_with_nulls_and_a_filter(api):
    c = await api.customer()
    v = await (
        await api.post("/api/v1/vehicles", headers=c.auth, json={"name": "v", "vehicle_identifier": "v"})
    ).get_json()
    for i, text in enumerate(HOSTILE):
        full = {
            "email": f"d{i}@example.com",
            "phone": "+49 30 1234",
            "license_number": text[:50],
            "vehicle_id": v["id"],
        }
        r = await api.post("/api/v1/drivers", headers=c.auth, json={"name": text, **(full if i % 2 else {})})
        assert r.status_code == 201, await r.get_data()
    db = await api.runtime.registry.for_customer(c.id)
    await _same_times_as_edge_cases(db, c.id, "drivers")
    for query, filters in (({"limit": 2}, {"vehicle_id": None}), ({"vehicle_id": v["id"]}, {"vehicle_id": v["id"]})):
        pages = await _pages(api, c, "/api/v1/drivers", query)
        after: Any = (None, None)
        for got in pages:
            want, cursor = await _pydantic_page(db, c.id, driver_store, query.get("limit", 50), after, **filters)
            assert got == want
            after = pagination.decode(cursor)
    assert len(json.loads(pages[0])["data"]) == 2  # the filtered list: the two drivers with a vehicle


class _Float(BaseModel):
    x: float


class _Nested(BaseModel):
    inner: _Float


class _Union(BaseModel):
    x: int | str


class _Aliased(BaseModel):
    x: str = Field(serialization_alias="y")


class _Serialized(BaseModel):
    x: str

    @field_serializer("x")
    def _upper(self, x: str) -> str:
        return x.upper()


@pytest.mark.parametrize("model", [_Float, _Nested, _Union, _Aliased, _Serialized])
def test_models_postgresql_cannot_render_are_refused(model):
    with pytest.raises(TypeError):
        fields_of(model)
