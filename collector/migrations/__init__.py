"""Alembic migrations of the collector schema."""
