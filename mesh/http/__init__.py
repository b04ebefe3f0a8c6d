"""The node's HTTP API on loopback: jobs and events, the OpenAI-compatible endpoint, request models,
the guards in front of it, and the editor's static files."""
