"""The error a run reports for a mistake in its config (``run.py`` prints it and exits 2)."""


class ConfigError(ValueError):
    """A config problem found before anything heavy runs; the message is one line."""
