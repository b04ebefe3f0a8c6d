"""The libp2p side of the peer gateway: py-libp2p (trio) run in one thread beside the node's asyncio loop,
TCP + Noise + Yamux only, the node's own Ed25519 key as its libp2p identity, one `/homemesh/1` stream
per peer carrying the same length-prefixed signed envelopes as before."""
