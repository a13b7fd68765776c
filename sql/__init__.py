"""Schema and migrations for the policy and the transfer log (SQLite and PostgreSQL)."""
