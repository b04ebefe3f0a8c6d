"""What a node runs for others, and how it is contained: the python sandbox (bubblewrap, cgroups,
seccomp, the step user), llm steps and models, scraping through Chromium and the egress proxy."""
