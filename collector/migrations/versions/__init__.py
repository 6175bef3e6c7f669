"""Alembic revision files, applied in order by `tr7-collector migrate`."""
