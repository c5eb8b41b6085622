"""Alembic environment and revisions; `scorer db upgrade` runs them."""
