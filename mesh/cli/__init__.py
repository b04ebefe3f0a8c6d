"""The `mesh` command line, the HTTP client it talks to a node with, and `mesh up`'s local meshes."""
