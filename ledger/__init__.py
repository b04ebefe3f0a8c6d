"""The node's SQLite ledger: hash-chained entries, receipt-backed credits, peer reputation."""
