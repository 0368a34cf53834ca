"""Customers, API keys, sync tokens, passwords."""
