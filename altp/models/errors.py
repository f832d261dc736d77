"""Errors and warnings shared by the model adapters.

Missing keys and shape mismatches stop a load (one ``CheckpointError`` line naming the file);
unexpected keys only warn, as upstream loads with ``strict=False`` (groundingLMM through
``from_pretrained``, OMG-LLaVA's ``load_checkpoint_in_model`` / ``load_state_dict(strict=False)``).
Each warning is one log line and is also handed to every open ``collect_warnings()`` block, from
which the loaders put it into ``metrics.json`` (``model_deviations.load_warnings``).
"""

import logging
from contextlib import contextmanager

log = logging.getLogger(__name__)
SHOWN = 5  # entries listed per kind of problem; the rest are counted
_COLLECTORS: list[list[str]] = []


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


def warn_unexpected(where: str, keys: list[str], kind: str = "unexpected keys") -> None:
    """One warning line ``"<where>: ignored 3 unexpected keys: a, b, c"`` (nothing if ``keys`` is
    empty), also recorded by every open ``collect_warnings()``."""
    if not keys:
        return
    line = f"{where}: ignored {listed(kind, list(keys))}"
    log.warning(line)
    for notes in _COLLECTORS:
        notes.append(line)


@contextmanager
def collect_warnings():
    """``with collect_warnings() as notes:`` -- ``notes`` receives the warning lines of the block."""
    notes: list[str] = []
    _COLLECTORS.append(notes)
    try:
        yield notes
    finally:
        _COLLECTORS.remove(notes)
