"""Errors shared by the model adapters."""


class CheckpointError(ValueError):
    """A weights folder or file is not what the released layout promises; one line that names
    the file and the missing or mismatched entries."""
