"""One cursor codec (api/pagination.py) and one 422 envelope (api/openapi.validation_failed) for
every list and every validation failure."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from api import openapi, pagination
from api.errors import ApiError

UTC = dt.UTC


def test_one_codec_round_trips_list_and_tracking_cursors():
    when, row_id = dt.datetime(2026, 12, 1, 21, 0, tzinfo=UTC), uuid.uuid4()
    assert pagination.decode(pagination.encode(when, row_id)) == (when, row_id)
    assert pagination.decode_parts(pagination.encode_parts(when, 7), 2) == [when, 7]  # geofence events
    assert pagination.decode_parts(pagination.encode_parts(when), 1) == [when]  # positions
    assert pagination.decode(None) == (None, None)


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!",
        pagination.encode_parts("2026-12-01T00:00:00", "x"),
        pagination.encode_parts(dt.datetime(2026, 1, 1, tzinfo=UTC), "not-a-uuid"),
        pagination.encode_parts(dt.datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_a_bad_cursor_is_the_one_422_envelope(cursor):
    with pytest.raises(ApiError) as caught:
        if cursor == "":
            pagination.decode_parts(cursor, 2)
        else:
            pagination.decode(cursor)
    exc = caught.value
    assert (exc.status, exc.code) == (422, "validation_failed")
    assert exc.details == {
        "errors": [
            {
                "location": "query",
                "field": "cursor",
                "message": "not a cursor returned by this list",
                "type": "value_error",
            }
        ]
    }


def test_every_422_helper_builds_the_same_envelope():
    one = {"location": "body", "field": "a", "message": "m", "type": "value_error"}
    assert openapi.field_error("body", "a", "m").details == openapi.validation_failed([one]).details
    assert (
        openapi.validation_failed([one], "tracker request cannot be read").message == "tracker request cannot be read"
    )
