"""Deterministic network simulator (issue 7): drives the same sans-I/O core as the node under a virtual
clock. Not built yet."""
