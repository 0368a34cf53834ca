"""Room extensions plugged into the sync core through hooks: persistence, cross-node fan-out, shared limits."""
