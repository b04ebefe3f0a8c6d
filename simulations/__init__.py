"""Deterministic network simulator: the real protocol core (mesh.jobrun, mesh.policy, mesh.quorum,
mesh.spotcheck) driven under a virtual clock, so a seed reproduces a whole network's run exactly."""
