"""Caption clean-up of a GCG model's decoded answer, exactly as the reference inference scripts do it.

Rules from ``groundingLMM`` (mbzuai-oryx, commit e74865f) ``eval/gcg/infer.py::inference``; its
``eval/gcg/evaluate.py`` cleans nothing, so these regexes decide what METEOR/CIDEr and recall see:

1. drop every ``"\\n"``, then replace double spaces by single ones (one ``str.replace`` pass);
2. keep the text after the last ``"ASSISTANT: "``;
3. phrases = ``<p>(.*?)</p>`` matches of that text, each stripped;
4. caption = that text with every ``<...>`` tag removed, then the literal ``[SEG]`` removed,
   whitespace collapsed, ``'`` stripped from both ends, then spaces stripped.

OMG-LLaVA's ``process_and_save_output`` (lxtGH/OMG-Seg ``omg_llava/tools/gcg_omg_seg_llava.py``,
and Sa2VA's copy) first removes ``"<s>"`` as well:
``drop_bos=True`` reproduces that. It only matters when ``<s>`` sits inside a ``<p>`` phrase or
next to spaces, since rule 4 removes the tag from the caption anyway.
"""

from __future__ import annotations

import re

PHRASE_PATTERN = re.compile(r"<p>(.*?)</p>")
TAG_PATTERN = re.compile(r"<.*?>")
SEG_TOKEN = "[SEG]"
ANSWER_PREFIX = "ASSISTANT: "


def clean_caption(raw: str, drop_bos: bool = False) -> tuple[str, list[str]]:
    """Return (caption, phrases) for a decoded answer (special tokens kept, as GLaMM decodes)."""
    text = raw.replace("<s>", "") if drop_bos else raw
    text = text.replace("\n", "").replace("  ", " ")
    text = text.split(ANSWER_PREFIX)[-1]
    phrases = [phrase.strip() for phrase in PHRASE_PATTERN.findall(text)]
    caption = TAG_PATTERN.sub("", text).replace(SEG_TOKEN, "")
    caption = " ".join(caption.split()).strip("'").strip()
    return caption, phrases
