"""What crosses between nodes: canonical JSON, the signed envelope, typed messages and their schemas,
signed peer records, node identities, and offline checks of signed answers."""
