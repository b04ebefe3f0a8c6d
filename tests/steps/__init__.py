"""Tests of step kinds and their containment."""
