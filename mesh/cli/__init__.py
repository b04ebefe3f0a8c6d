"""The `mesh` command line and the HTTP client it talks to a node with."""
