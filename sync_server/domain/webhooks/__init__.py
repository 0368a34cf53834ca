"""Webhooks: the outbox event sources publish to, the endpoints, the delivery worker (issue 17)."""
