"""The database layer: models, engine, and query functions that take a Session and never commit."""
