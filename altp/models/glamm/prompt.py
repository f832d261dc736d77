"""GLaMM's GCG prompt and its token ids (docs/upstream/glamm.md §2, §1.5).

The prompt is ``conv_llava_v1`` (system text, ``USER: ``, ``ASSISTANT:``) around the user message
of ``eval/gcg/infer.py``: ``<image>`` widened to ``<im_start><image><im_end>``, then the GCG
instruction with infer.py's whitespace quirk (a backslash-newline inside the string literal leaves
4 indentation spaces, so 5 spaces follow "interleaved").

Its ids depend on the transformers version (docs/upstream/glamm.md §1.5). Two modes:

* ``reference``: the 83 ids transformers 4.28 (the authors' pin) gives, hard-coded from docs/upstream/glamm.md:
  BOS, text, ``-200`` at index 36, text; the 576 image features take positions 36..611 and the
  prefill is 83 - 1 + 576 = 658 tokens. The default: this is what the released model was run on.
* ``tokenizer``: ``tokenizer_image_token`` with the installed transformers (5.x): 84 ids, because
  5.x keeps the space before ``<im_start>`` as a lone '▁' (29871); the image then starts at 37.
"""

from __future__ import annotations

IMAGE_TOKEN_INDEX = -200  # model/llava/constants.py: the placeholder the image features replace
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
INSTRUCTION = ("Could you please give me a detailed description of the image? Please respond with "
               "interleaved     segmentation masks for the corresponding parts of the answer.")
USER_MESSAGE = "The <im_start><image><im_end> provides an overview of the picture.\n" + INSTRUCTION
PROMPT = f"{SYSTEM} USER: {USER_MESSAGE} ASSISTANT:"  # SeparatorStyle.TWO, empty assistant turn

REFERENCE_IDS = [  # docs/upstream/glamm.md §1.5, transformers 4.28.1 with the reconstructed GLaMM tokenizer
    1, 319, 13563, 1546, 263, 12758, 5199, 322, 385, 23116, 21082, 20255, 29889,
    450, 20255, 4076, 8444, 29892, 13173, 29892, 322, 1248, 568, 6089, 304, 278, 5199, 29915, 29879,
    5155, 29889, 3148, 1001, 29901, 450, 32000, IMAGE_TOKEN_INDEX, 32001,
    8128, 385, 975, 1493, 310, 278, 7623, 29889, 13,
    23323, 366, 3113, 2367, 592, 263, 13173, 6139, 310, 278, 1967, 29973,
    3529, 10049, 411, 1006, 280, 10511, 268, 10768, 362, 11105, 29879, 363, 278, 6590, 5633, 310,
    278, 1234, 29889, 319, 1799, 9047, 13566, 29901,
]
# the reference ids are only meaningful for GLaMM's vocabulary: check the ids they rely on
REFERENCE_TOKENS = {"<s>": 1, "</s>": 2, "<im_start>": 32000, "<im_end>": 32001, "[SEG]": 32004}
MODES = ("reference", "tokenizer")


def tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """``model/llava/mm_utils.py::tokenizer_image_token``: tokenize the chunks around ``<image>``
    (each with BOS), keep the first chunk's BOS only, put ``-200`` between the chunks."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    offset = 1 if chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = chunks[0][:offset]
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def build_prompt_ids(tokenizer, mode: str = "reference") -> list[int]:
    """The GCG prompt's ids with one ``-200`` where the image goes (see the module docstring)."""
    if mode == "tokenizer":
        return tokenizer_image_token(PROMPT, tokenizer)
    if mode != "reference":
        raise ValueError(f"prompt_ids={mode}: choose one of {', '.join(MODES)}")
    found = {token: tokenizer.convert_tokens_to_ids(token) for token in REFERENCE_TOKENS}
    if found != REFERENCE_TOKENS:
        raise ValueError(f"prompt_ids=reference needs GLaMM's vocabulary {REFERENCE_TOKENS}, the "
                         f"tokenizer has {found}; use prompt_ids=tokenizer")
    return list(REFERENCE_IDS)
