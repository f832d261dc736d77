"""OMG-LLaVA's special tokens against upstream ``_add_special_tokens`` under transformers 4.36
(tests/fixtures/parity/omg_tokenizer/, recorded by scripts/parity/omg_tokenizer_upstream.py).

Two InternLM2-style vocabularies: ``plain`` and ``pieces`` (``[SEG]``, ``<p>``, ``</p>`` already
pieces). Our sentencepiece tokenizer must give the ids upstream stores, the embedding rows it
resizes to, and the ids of every probe string; a copy that skips existing pieces (the bug of
issue 13) must fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from altp.models.omg_llava import prompt

pytest.importorskip("sentencepiece")
FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "omg_tokenizer"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


def mismatches(name: str) -> list[str]:
    up = EXPECTED["vocabs"][name]
    tokenizer = prompt.load_tokenizer(FIXTURE / name)
    ids = prompt.add_special_tokens(tokenizer)
    found = []
    if {t: ids[t] for t in up["ids"]} != up["ids"]:
        found.append(f"{name}: ids {ids} vs {up['ids']}")
    if (ids["embedding_rows"], len(tokenizer)) != (up["embedding_rows"], up["len"]):
        found.append(f"{name}: rows / length {ids['embedding_rows']}, {len(tokenizer)} vs {up['embedding_rows']}, "
                     f"{up['len']}")
    for probe, want in zip(EXPECTED["probes"], up["encoded"]):
        if tokenizer.encode(probe, add_special_tokens=False) != want:
            found.append(f"{name}: {probe!r} encodes differently")
    if tokenizer.encode(EXPECTED["probes"][0]) != up["with_bos"]:
        found.append(f"{name}: BOS handling differs")
    return found


def test_fixture_records_upstream():
    assert EXPECTED["upstream"].startswith("lxtGH/OMG-Seg@1ae2e7d") and EXPECTED["transformers"] == "4.36.2"
    assert EXPECTED["vocabs"]["pieces"]["ids"]["[SEG]"] < EXPECTED["vocabs"]["pieces"]["embedding_rows"] - 1


@pytest.mark.parametrize("name", ["plain", "pieces"])
def test_special_tokens_match_transformers_4_36(name):
    assert mismatches(name) == []


def test_parity_fails_when_existing_pieces_are_skipped(monkeypatch):
    def skipping(self, tokens, special_tokens=True):  # the old add_tokens: pieces were not registered
        for token in tokens:
            if token not in self.added and self.sp.piece_to_id(token) == self.unk_token_id:
                self._register(token, len(self))

    monkeypatch.setattr(prompt.SentencePieceTokenizer, "add_tokens", skipping)
    assert mismatches("plain") == []  # nothing to skip there
    assert any("ids" in line for line in mismatches("pieces"))
