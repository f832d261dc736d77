"""Errors shared by the model adapters."""

SHOWN = 5  # entries listed per kind of problem; the rest are counted


class CheckpointError(ValueError):
    """A weights folder or file is not what the released layout promises; one line that names
    the file and the missing or mismatched entries."""


def listed(kind: str, items: list[str]) -> str:
    """``"7 missing keys: a, b, c, d, e (+2 more)"``."""
    extra = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return f"{len(items)} {kind}: {', '.join(items[:SHOWN])}{extra}"


def raise_problems(where: str, problems: list[tuple[str, list[str]]]) -> None:
    """One ``CheckpointError`` line ``"<where>: <listed>; <listed>"`` for the non-empty kinds."""
    found = [listed(kind, items) for kind, items in problems if items]
    if found:
        raise CheckpointError(f"{where}: " + "; ".join(found))
