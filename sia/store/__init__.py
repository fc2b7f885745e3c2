"""Event stores (SQLite default, in-memory), blobs, the effect cache and run leases."""
