"""Record how OMG-LLaVA's special tokens register under transformers 4.36 (tests/fixtures/parity/omg_tokenizer/).

    /work/venvs/omg/bin/python scripts/parity/omg_tokenizer_upstream.py --src /work/upstream/OMG-Seg

transformers 4.36.2 + sentencepiece 0.1.99 (README, "Parity with upstream"). For two tiny
InternLM2-style ``tokenizer.model`` files -- ``plain`` and ``pieces``, where ``[SEG]``, ``<p>`` and
``</p>`` are already pieces of the vocabulary -- it runs UPSTREAM ``OMG_LLaVA._add_special_tokens``
(lxtGH/OMG-Seg@1ae2e7d ``omg_llava/omg_llava/model/omg_llava.py:173-193``, its source taken from
the file; the LLM is a stub that records ``resize_token_embeddings``) on a slow tokenizer whose
``add_tokens`` / ``tokenize`` / ``decode`` are transformers 4.36's own. The tokenizer subclass holds
only InternLM2Tokenizer's sentencepiece plumbing (vocab_size, get_vocab, _tokenize, the id/piece
conversions, BOS), as in the HF hub's ``tokenization_internlm2.py`` (not vendored in OMG-Seg).
Writes each ``tokenizer.model`` + ``tokenizer_config.json`` and ``expected.json``: the ids
upstream stores, the embedding rows and the ids of probe strings.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
from pathlib import Path
from types import SimpleNamespace

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "parity" / "omg_tokenizer"
CORPUS = ["Could you please give me a detailed description of the image?", "a man riding a horse on the beach",
          "user assistant segmentation masks for the corresponding parts of the answer"] * 10
VOCABS = {"plain": ["<|im_end|>", "<|im_start|>"], "pieces": ["<|im_end|>", "<|im_start|>", "[SEG]", "<p>", "</p>"]}
PROBES = ["<|im_start|>user\n<image>\nCould you please give me a detailed description?<|im_end|>\n",
          "A <p>man</p> [SEG] riding a <p>horse</p>[SEG] on<region> the beach<mark>.",
          "[SEG][SEG]<p></p>", " <p> a man </p> "]
ENTRY = {"special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}


def tokenizer_class():
    import sentencepiece as spm
    from transformers import PreTrainedTokenizer

    class InternLM2Tokenizer(PreTrainedTokenizer):  # the hub class's sentencepiece plumbing only
        vocab_files_names = {"vocab_file": "./tokenizer.model"}

        def __init__(self, vocab_file, add_bos_token=True, **kwargs):
            self.add_bos_token = add_bos_token
            self.sp_model = spm.SentencePieceProcessor(model_file=str(vocab_file))
            super().__init__(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>", **kwargs)

        @property
        def vocab_size(self):
            return self.sp_model.get_piece_size()

        def get_vocab(self):
            vocab = {self.convert_ids_to_tokens(i): i for i in range(self.vocab_size)}
            vocab.update(self.added_tokens_encoder)
            return vocab

        def _tokenize(self, text):
            return self.sp_model.encode(text, out_type=str)

        def _convert_token_to_id(self, token):
            return self.sp_model.piece_to_id(token)

        def _convert_id_to_token(self, index):
            return self.sp_model.IdToPiece(index)

        def convert_tokens_to_string(self, tokens):
            return self.sp_model.decode(tokens)

        def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
            return ([self.bos_token_id] if self.add_bos_token else []) + token_ids_0 + (token_ids_1 or [])

    return InternLM2Tokenizer


def upstream_add_special_tokens(src: Path):
    """``OMG_LLaVA._add_special_tokens`` compiled from upstream's file (it uses only self.*)."""
    path = src / "omg_llava/omg_llava/model/omg_llava.py"
    tree = ast.parse(path.read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_add_special_tokens")
    namespace = {}
    exec(compile(ast.Module([node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["_add_special_tokens"]


def main() -> None:
    import sentencepiece as spm
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True)
    args = parser.parse_args()
    add_special_tokens, cls = upstream_add_special_tokens(args.src), tokenizer_class()
    expected = {"upstream": "lxtGH/OMG-Seg@1ae2e7d446a607fddaefabf4ace312a2cdf7ab55 "
                            "omg_llava/omg_llava/model/omg_llava.py::_add_special_tokens",
                "transformers": transformers.__version__, "probes": PROBES, "vocabs": {}}
    for name, symbols in VOCABS.items():
        folder = OUT / name
        folder.mkdir(parents=True, exist_ok=True)
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=90,
                                       model_type="bpe", hard_vocab_limit=False, character_coverage=1.0,
                                       user_defined_symbols=symbols, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                       minloglevel=2)
        (folder / "tokenizer.model").write_bytes(model.getvalue())
        config = {"tokenizer_class": "InternLM2Tokenizer", "add_bos_token": True,
                  "added_tokens_decoder": {"3": {"content": "<|im_end|>", **ENTRY},
                                           "4": {"content": "<|im_start|>", **ENTRY}}}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        tokenizer = cls(folder / "tokenizer.model")
        tokenizer.add_tokens(["<|im_end|>", "<|im_start|>"], special_tokens=True)  # as added_tokens_decoder
        resized = []
        owner = SimpleNamespace(tokenizer=tokenizer, llm=SimpleNamespace(resize_token_embeddings=resized.append,
                                                                         enable_input_require_grads=lambda: None),
                                use_activation_checkpointing=False, use_llm_lora=False, freeze_llm=True)
        add_special_tokens(owner)
        expected["vocabs"][name] = {
            "ids": {t: getattr(owner, f"{a}_token_idx") for t, a in (("[SEG]", "seg"), ("<p>", "bop"), ("</p>", "eop"),
                                                                     ("<region>", "region"), ("<mark>", "mark"))},
            "embedding_rows": resized[0], "len": len(tokenizer),
            "encoded": [tokenizer(p, add_special_tokens=False).input_ids for p in PROBES],
            "with_bos": tokenizer(PROBES[0]).input_ids}
        print(name, expected["vocabs"][name]["ids"], "rows", resized[0])
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()
