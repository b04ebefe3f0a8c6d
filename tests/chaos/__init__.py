"""Chaos: real nodes under a seeded schedule of kill -9, restarts, SIGSTOP/SIGCONT and cut links while jobs
are submitted; then the invariants of "nothing lost" (see harness.py). `python -m tests.chaos --help`."""
