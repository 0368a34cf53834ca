"""The billing policy table (sync_server/domain/billing/policy.py), pure."""

import datetime as dt

import pytest

from sync_server.domain.billing import policy

NOW = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC)
GRACE = dt.timedelta(days=7)


def account(status, *, sub="sub_1", period_end=None, past_due_since=None, suspended_for=None):
    return {
        "stripe_subscription_id": sub,
        "subscription_status": status,
        "current_period_end": period_end,
        "past_due_since": past_due_since,
        "status_at": 100,
        "invoice_at": 90,
        "suspended_for": suspended_for,
    }


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (account("active"), "reactivate"),
        (account("trialing"), "reactivate"),
        (account(None, sub=None), "reactivate"),  # a free plan: nothing to suspend for
        (account("past_due", past_due_since=NOW - dt.timedelta(days=1)), None),  # in the grace period
        (account("past_due", past_due_since=NOW - dt.timedelta(days=7)), "suspend"),
        (account("unpaid", past_due_since=NOW - dt.timedelta(days=30)), "suspend"),
        (account("past_due"), "reactivate"),  # a paid invoice newer than the status cleared it
        (account("canceled", period_end=NOW + dt.timedelta(days=3)), None),  # paid until then
        (account("canceled", period_end=NOW), "suspend"),
        (account("incomplete_expired"), "suspend"),
        (account("paused"), None),
        (account("incomplete"), None),
    ],
)
def test_decide(row, expected):
    assert policy.decide(row, now=NOW, grace=GRACE) == expected


def test_a_suspension_is_made_once_per_reported_state():
    row = account("canceled", period_end=NOW)
    assert policy.suspends_now(row, "suspend")
    row["suspended_for"] = policy.state_key(row)
    assert not policy.suspends_now(row, "suspend")  # an operator's reactivation is not overruled
    row["status_at"] = 101  # until Stripe reports something newer
    assert policy.suspends_now(row, "suspend")
    assert not policy.suspends_now(row, "reactivate") and not policy.suspends_now(row, None)
