"""The node's Thespian actors: thin wrappers that move typed messages into the core and out."""
