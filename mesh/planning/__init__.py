"""Plain-language questions to job plans: the model's planner and the deterministic rules."""
