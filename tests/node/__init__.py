"""Tests of a running node and meshes of them."""
