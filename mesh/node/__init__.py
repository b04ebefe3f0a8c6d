"""One running node: its lifecycle, the peer gateway and flow control, the peer table, the asyncio
drivers of the submitter and the worker, job events, the bridge to the actors, and local meshes."""
