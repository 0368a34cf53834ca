"""The billing policy: what Stripe's reported state means for a customer's access (pure).

- active / trialing (and no unpaid invoice newer than that): a customer billing suspended is
  reactivated. A customer an operator suspended stays suspended (customers.suspended_by).
- past_due (a subscription past_due or unpaid, or an invoice.payment_failed): a grace period of
  STRIPE_PAST_DUE_GRACE_HOURS from the first failure, then suspended. A paid invoice ends it.
- canceled (also unpaid at the end of Stripe's retries, incomplete_expired): suspended at the end of
  the period already paid for (current_period_end).
- no Stripe subscription (a free plan): nothing to suspend for.
- incomplete / paused: left as is.
Each suspension is made once per reported state (`state_key`): an operator who reactivates a billing
suspended customer is not overruled until Stripe reports something newer.

The state is kept from the webhooks in any arrival order (sync_server/domain/billing/stripe_events.py);
the decision is re-taken after each event and by the sync loop, for the timers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Literal

ENDED = frozenset({"canceled", "incomplete_expired"})  # the subscription is over
PAST_DUE = frozenset({"past_due", "unpaid"})
IN_GOOD_STANDING = frozenset({"active", "trialing"})

Action = Literal["suspend", "reactivate"]


def state_key(account: Mapping[str, Any]) -> str:
    """The reported state a decision was taken on (status and invoice recency)."""
    return f"{account['status_at']}:{account['invoice_at']}"


def decide(account: Mapping[str, Any], *, now: dt.datetime, grace: dt.timedelta) -> Action | None:
    """What the state of `account` (a billing_accounts row) calls for now; None: nothing (yet)."""
    status = account["subscription_status"]
    if account["stripe_subscription_id"] is None:
        return "reactivate"
    if status in ENDED:
        end = account["current_period_end"]
        return "suspend" if end is None or now >= end else None
    since = account["past_due_since"]
    if since is not None:
        return "suspend" if now >= since + grace else None
    if status in IN_GOOD_STANDING or status in PAST_DUE or status is None:
        # past_due without past_due_since: a paid invoice newer than that status ended it
        return "reactivate"
    return None


def suspends_now(account: Mapping[str, Any], action: Action | None) -> bool:
    """A suspension not yet made for this reported state."""
    return action == "suspend" and account["suspended_for"] != state_key(account)
