"""Plans, their limits, and subscriptions."""
