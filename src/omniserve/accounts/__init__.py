"""Who is calling and may they: API keys, rate limits, quotas and the usage ledger."""
