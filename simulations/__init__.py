"""Deterministic network simulator: the real protocol core (mesh.core.jobrun, mesh.core.policy, mesh.core.quorum,
mesh.core.spotcheck) driven under a virtual clock, so a seed reproduces a whole network's run exactly."""
