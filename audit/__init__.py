"""Audit bundles: writing, offline verification (`tr7-audit`), summaries and the simulated month."""
