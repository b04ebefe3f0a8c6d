"""Tests of the sans-I/O core."""
