"""Stage functions that join pipeline/ and training/ to the database, run in-process (embedded
mode) or inside Celery tasks (distributed mode)."""
