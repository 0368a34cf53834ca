"""Vehicles' device secrets and geofence shapes."""
