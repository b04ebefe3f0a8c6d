"""The sans-I/O protocol core: job files and their DAG, the step catalogue, cross-checking (quorum,
comparators, placement and reputation policy, spot checks), each job's run (jobrun) and the submitter's
whole state (submission: slots, checks, rechecks, ledger entries, as effects). Never imports asyncio,
Thespian, sqlite, FastAPI, pyppeteer or llama_cpp: the node and the simulator both drive it."""
