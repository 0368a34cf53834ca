"""Domain services shared by the REST and the sync side, one subpackage per domain."""
