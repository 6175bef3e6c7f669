"""tr7-collector: verified ingest, transparency log, hour aggregates, billing, audit export, API."""
