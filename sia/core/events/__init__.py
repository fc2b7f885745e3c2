"""Typed events, their canonical encoding, hash chain and upcasting."""
