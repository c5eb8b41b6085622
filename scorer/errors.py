"""Errors a user is meant to see: one line, no traceback.

`ScorerError` and its subclasses are expected failures (bad input, missing model, service down);
the CLI turns them into ``Error: ...`` and exit code 1. Anything else is a bug and keeps its
traceback.
"""


class ScorerError(Exception):
    """An expected failure with a message that says what to do."""


class InputError(ScorerError):
    """One input item (a file, a row) cannot be processed; it fails alone."""


class NoActiveModelError(ScorerError):
    """Scoring was asked for but no model version is active."""
