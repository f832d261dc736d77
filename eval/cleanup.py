"""GLaMM's caption clean-up, as the evaluator's users know it; it lives in ``altp.models.cleanup``
so that models can apply it without importing ``eval``."""

from altp.models.cleanup import ANSWER_PREFIX, PHRASE_PATTERN, SEG_TOKEN, TAG_PATTERN, clean_caption

__all__ = ["ANSWER_PREFIX", "PHRASE_PATTERN", "SEG_TOKEN", "TAG_PATTERN", "clean_caption"]
