"""OMG-LLaVA's GCG prompt, special tokens and InternLM2 tokenizer (docs/upstream/omg_llava.md §1.4, §3.3-3.4).

* ``gcg_omg_seg_llava.py::main``: text = ``'<image>' + '\\n' + question``, wrapped by xtuner's
  ``PROMPT_TEMPLATE.internlm2_chat['INSTRUCTION']`` (no system prompt); ``forward_model`` splits
  it on ``<image>``, encodes the first chunk WITH BOS and the rest with
  ``add_special_tokens=False``, and puts ``IMAGE_TOKEN_INDEX`` (-200) between them.
* ``GCG_QUESTIONS`` are tried in order until an answer holds a [SEG] (§3.3).
* ``OMG_LLaVA._add_special_tokens`` (omg_llava.py): ``[SEG] <p> </p> <region>`` are added, the
  embeddings are resized, and only then ``<mark>`` (it never gets an embedding row).
* Stopping: ``</s>`` (eos, 2) and the template's stop word ``<|im_end|>`` (92542) (§3.4).

The tokenizer is InternLM2's sentencepiece ``tokenizer.model`` behind remote code
(``tokenization_internlm2.py::InternLM2Tokenizer``). ``SentencePieceTokenizer`` re-implements
what that class does under transformers 4.36 (the authors' pin) without remote code: text is
split on the added tokens (those of ``tokenizer_config.json`` and the ones added here), every
other chunk goes through ``sp_model.encode`` unchanged, BOS is prepended, no EOS.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

log = logging.getLogger(__name__)

IMAGE_TOKEN_INDEX = -200  # xtuner/utils/constants.py
DEFAULT_IMAGE_TOKEN = "<image>"
INSTRUCTION = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"  # internlm2_chat
IM_END = "<|im_end|>"
# omg_llava/tools/gcg_omg_seg_llava.py (lxtGH/OMG-Seg, verified verbatim at 74f593d4), in order
GCG_QUESTIONS = (
    "Could you please give me a detailed description of the image? Please respond with "
    "interleaved segmentation masks for the corresponding parts of the answer.",
    "Can you provide a thorough description of the this image? Please output with interleaved "
    "segmentation masks for the corresponding phrases.",
    "Please describe in detail the contents of the image. Please respond with interleaved "
    "segmentation masks for the corresponding parts of the answer.",
    "Could you give a comprehensive explanation of what can be found within this picture? "
    "Please output with interleaved segmentation masks for the corresponding phrases.",
    "Could you give me an elaborate explanation of this picture? Please respond with "
    "interleaved segmentation masks for the corresponding phrases.",
    "Could you provide me with a detailed analysis of this photo? Please output with "
    "interleaved segmentation masks for the corresponding parts of the answer.",
)
EMBEDDED_TOKENS = ("[SEG]", "<p>", "</p>", "<region>")  # added before resize_token_embeddings
MARK_TOKEN = "<mark>"  # added after it
# inferred for InternLM2's 92544-piece vocabulary (docs/upstream/omg_llava.md §1.4); checked, not enforced
EXPECTED_IDS = {"[SEG]": 92544, "<p>": 92545, "</p>": 92546, "<region>": 92547, "<mark>": 92548,
                IM_END: 92542}


def prompt_text(question: str = GCG_QUESTIONS[0]) -> str:
    return INSTRUCTION.format(input=DEFAULT_IMAGE_TOKEN + "\n" + question)


def build_prompt_ids(tokenizer, question: str = GCG_QUESTIONS[0]) -> list[int]:
    """``forward_model``'s ids: BOS + first chunk, -200, the rest without special tokens."""
    ids = []
    for i, chunk in enumerate(prompt_text(question).split(DEFAULT_IMAGE_TOKEN)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(tokenizer.encode(chunk) if i == 0 else tokenizer.encode(chunk, add_special_tokens=False))
    return ids


def add_special_tokens(tokenizer) -> dict[str, int]:
    """``OMG_LLaVA._add_special_tokens`` on ``tokenizer``; returns each token's id and
    ``embedding_rows``, the vocabulary size the LLM was resized to (the .pth's rows)."""
    tokenizer.add_tokens(list(EMBEDDED_TOKENS), special_tokens=True)
    rows = len(tokenizer)
    tokenizer.add_tokens([MARK_TOKEN], special_tokens=True)
    ids = {token: tokenizer.encode(token, add_special_tokens=False)[0]
           for token in EMBEDDED_TOKENS + (MARK_TOKEN, IM_END)}
    differ = {t: i for t, i in ids.items() if t in EXPECTED_IDS and i != EXPECTED_IDS[t]}
    if differ and rows > 92000:  # only meaningful for the real InternLM2 vocabulary
        log.warning("OMG-LLaVA special token ids %s differ from the expected %s", differ, EXPECTED_IDS)
    return {**ids, "embedding_rows": rows}


def stop_ids(tokenizer) -> set[int]:
    """``</s>`` (``GenerationConfig.eos_token_id``) and ``<|im_end|>`` (``StopWordStoppingCriteria``)."""
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if im_end is None or im_end == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {IM_END} token: not InternLM2-chat's")
    return {tokenizer.eos_token_id, im_end}


def decode(tokenizer, ids) -> str:
    """Upstream ``tokenizer.decode(sequences[0])``: special tokens kept (cleaned up later)."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


class SentencePieceTokenizer:
    """The slice of ``InternLM2Tokenizer`` (transformers 4.36 slow tokenizer) that GCG needs."""

    def __init__(self, model_file: str | Path, added: dict[str, int] | None = None,
                 add_bos_token: bool = True):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.add_bos_token = add_bos_token
        self.bos_token_id, self.eos_token_id = self.sp.bos_id(), self.sp.eos_id()
        self.unk_token_id = self.sp.unk_id()
        self.pad_token_id = self.eos_token_id  # InternLM2Tokenizer: pad_token="</s>"
        self.added: dict[str, int] = {}  # token -> id; split out before sentencepiece
        self._by_id: dict[int, str] = {}
        for token, index in (added or {}).items():
            self._register(token, index)

    def _register(self, token: str, index: int) -> None:
        self.added[token] = index
        self._by_id = {i: t for t, i in self.added.items()}
        # longest first, so that a token that prefixes another cannot win
        self._split = re.compile("(" + "|".join(map(re.escape, sorted(self.added, key=len, reverse=True))) + ")")

    def __len__(self) -> int:  # sentencepiece pieces + added tokens beyond them
        return self.sp.get_piece_size() + sum(i >= self.sp.get_piece_size() for i in self.added.values())

    def add_tokens(self, tokens: list[str], special_tokens: bool = True) -> int:
        """transformers 4.36 ``PreTrainedTokenizer._add_tokens`` (tokenization_utils.py:463-503):
        an added token is skipped; a token that is already a sentencepiece piece is registered
        under the piece's own id (:492-503: text is then split on it, so it encodes as that one
        id); any other gets the next id, ``len(self)``. Returns how many ids are new."""
        new = 0
        for token in tokens:
            if not token or token in self.added:
                continue
            piece = self.sp.piece_to_id(token)
            if self.sp.id_to_piece(piece) == token:  # in get_vocab(): keeps its id
                self._register(token, piece)
            else:
                self._register(token, len(self))
                new += 1
        return new

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.added[token] if token in self.added else self.sp.piece_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.bos_token_id] if add_special_tokens and self.add_bos_token else []
        chunks = self._split.split(text) if self.added else [text]
        for chunk in chunks:
            if chunk in self.added:
                ids.append(self.added[chunk])
            elif chunk:  # 4.36 skips empty chunks between adjacent added tokens
                ids.extend(self.sp.encode(chunk))
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        return SimpleNamespace(input_ids=self.encode(text, add_special_tokens))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """4.36's ``_decode``: added tokens stand alone, runs of pieces go through sentencepiece,
        the parts are joined with spaces (``spaces_between_special_tokens``). Whitespace next to
        tags may differ slightly from upstream; the caption clean-up collapses it anyway."""
        specials = {self.bos_token_id, self.eos_token_id, self.unk_token_id}
        parts, run = [], []
        for index in (int(i) for i in ids):
            if index in self._by_id or index in specials:
                if run:
                    parts.append(self.sp.decode(run))
                    run = []
                if not skip_special_tokens:
                    parts.append(self._by_id.get(index) or self.sp.id_to_piece(index))
            else:
                run.append(index)
        if run:
            parts.append(self.sp.decode(run))
        return " ".join(p for p in parts if p)


def load_tokenizer(folder: str | Path, prefer: str = "sentencepiece"):
    """InternLM2's tokenizer from its HF folder without remote code.

    ``prefer="sentencepiece"`` (default, needs the ``sentencepiece`` package): ``SentencePieceTokenizer``,
    which mirrors ``InternLM2Tokenizer``. Otherwise, or without the package,
    ``AutoTokenizer(trust_remote_code=False)``, whose converted fast tokenizer may split text
    next to special tokens differently (unverified on the real ``tokenizer.model``)."""
    folder = Path(folder)
    if prefer == "sentencepiece":
        try:
            import sentencepiece  # noqa: F401
        except ImportError:
            log.warning("sentencepiece is not installed: falling back to AutoTokenizer")
        else:
            config_path = folder / "tokenizer_config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
            added = {entry["content"]: int(index)
                     for index, entry in config.get("added_tokens_decoder", {}).items()}
            return SentencePieceTokenizer(folder / "tokenizer.model", added,
                                          add_bos_token=config.get("add_bos_token", True))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
