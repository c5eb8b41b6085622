"""scorer: singer-gender labels for song snippets, at the scale of a music library."""

__version__ = "0.1.0"
