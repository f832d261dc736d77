"""OMG-LLaVA's InternLM2 -> Llama conversion (LoRA merged) and its InternLM2-chat prompt.

The conversion is checked against an independent, unmerged InternLM2 forward written here from
``modeling_internlm2.py`` (packed ``wqkv`` read as ``(kv_heads, q_per_kv + 2, head_dim)``, GQA by
repeating each KV head for its group, rotate-half RoPE with ``rope_theta``, RMSNorm, LoRA as
``x @ A.T @ B.T * scale``), with 4 query heads over 2 KV heads so the grouping matters.
The sentencepiece test builds a tiny ``tokenizer.model`` and is skipped without the package; the
prompt layout is also tested with a stub tokenizer that needs nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omg_fixtures import GCG_FILE, SEG_FILE, loader_kwargs, make_tiny_omg_llava
from safetensors.torch import save_file

from altp.models.errors import CheckpointError
from altp.models.omg_llava import load_omg_llava, prompt
from altp.models.omg_llava.internlm2 import PTH_PREFIX, load_internlm2_llama

DIM, LAYERS, HEADS, KV, FFN, VOCAB, RESIZED, THETA, EPS = 32, 2, 4, 2, 48, 40, 45, 100.0, 1e-5
HEAD = DIM // HEADS
SCALE = 0.5


def internlm2_folder(path, seed: int = 0, bin_file: bool = False) -> dict[str, torch.Tensor]:
    """A tiny InternLM2-chat folder: config.json with InternLM2's field names, 2 safetensors
    shards + index (or one ``pytorch_model.bin``). Returns the tensors."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.2):
        return torch.randn(*shape, generator=gen) * std

    tensors = {"model.tok_embeddings.weight": rand(VOCAB, DIM), "output.weight": rand(VOCAB, DIM),
               "model.norm.weight": 1 + rand(DIM, std=0.1)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors.update({p + "attention.wqkv.weight": rand((HEADS + 2 * KV) * HEAD, DIM),
                        p + "attention.wo.weight": rand(DIM, DIM),
                        p + "feed_forward.w1.weight": rand(FFN, DIM),
                        p + "feed_forward.w3.weight": rand(FFN, DIM),
                        p + "feed_forward.w2.weight": rand(DIM, FFN),
                        p + "attention_norm.weight": 1 + rand(DIM, std=0.1),
                        p + "ffn_norm.weight": 1 + rand(DIM, std=0.1)})
    path.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "bias": False,
              "hidden_size": DIM, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "num_key_value_heads": KV, "intermediate_size": FFN, "rms_norm_eps": EPS,
              "rope_theta": THETA, "vocab_size": VOCAB, "max_position_embeddings": 64,
              "rope_scaling": {"type": "dynamic", "factor": 2.0}}
    (path / "config.json").write_text(json.dumps(config))
    if bin_file:
        torch.save(tensors, path / "pytorch_model.bin")
        return tensors
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, names in shards.items():
        save_file({k: tensors[k].contiguous() for k in names}, str(path / name))
    index = {"metadata": {}, "weight_map": {k: n for n, names in shards.items() for k in names}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return tensors


def omg_pth(path, seed: int = 1, rank: int = 4, base_layer: bool = True) -> dict[str, torch.Tensor]:
    """A tiny GCG .pth: resized embedding/head, LoRA on every linear and on ``output``, plus a
    projector key the LLM loader must leave alone. Returns the (unprefixed) LLM tensors."""
    gen = torch.Generator().manual_seed(seed)
    llm = {"model.tok_embeddings.weight": torch.randn(RESIZED, DIM, generator=gen) * 0.2,
           "output.weight": torch.randn(RESIZED, DIM, generator=gen) * 0.2}
    shapes = {"attention.wqkv": ((HEADS + 2 * KV) * HEAD, DIM), "attention.wo": (DIM, DIM),
              "feed_forward.w1": (FFN, DIM), "feed_forward.w3": (FFN, DIM), "feed_forward.w2": (DIM, FFN)}
    stems = {f"model.layers.{i}.{m}": s for i in range(LAYERS) for m, s in shapes.items()}
    stems["output"] = (RESIZED, DIM)
    for stem, (out_dim, in_dim) in stems.items():
        llm[stem + ".lora_A.weight"] = torch.randn(rank, in_dim, generator=gen) * 0.2
        llm[stem + ".lora_B.weight"] = torch.randn(out_dim, rank, generator=gen) * 0.2
    saved = {}
    for key, value in llm.items():
        name = key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
        if base_layer and key == "output.weight":
            name = "output.base_layer.weight"
        saved[PTH_PREFIX + name] = value
    saved["projector.model.seperate_embed.weight"] = torch.zeros(1, DIM)
    torch.save({"state_dict": saved} if base_layer else saved, path)
    return llm


def rms(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def rotate_half(x):
    return torch.cat([-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]], dim=-1)


def reference_forward(base, lora, ids):
    """InternLM2 (modeling_internlm2.py) with unmerged LoRA, float32, batch 1."""

    def linear(x, stem, weight):
        out = x @ weight.T
        if stem + ".lora_A.weight" in lora:
            out = out + x @ lora[stem + ".lora_A.weight"].T @ lora[stem + ".lora_B.weight"].T * SCALE
        return out

    n, groups = len(ids), HEADS // KV
    x = lora["model.tok_embeddings.weight"][ids]
    inv_freq = 1.0 / THETA ** (torch.arange(0, HEAD, 2).float() / HEAD)
    angles = torch.outer(torch.arange(n).float(), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    causal = torch.full((n, n), float("-inf")).triu(1)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        h = rms(x, base[p + "attention_norm.weight"])
        qkv = linear(h, p + "attention.wqkv", base[p + "attention.wqkv.weight"])
        qkv = qkv.view(n, KV, groups + 2, HEAD)  # '(h gs d)' per position
        q = qkv[:, :, :groups].reshape(n, HEADS, HEAD).transpose(0, 1)  # query head = kv * groups + g
        k, v = qkv[:, :, -2].transpose(0, 1), qkv[:, :, -1].transpose(0, 1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(HEAD) + causal, -1) @ v
        x = x + linear(attn.transpose(0, 1).reshape(n, DIM), p + "attention.wo", base[p + "attention.wo.weight"])
        h = rms(x, base[p + "ffn_norm.weight"])
        gate = torch.nn.functional.silu(linear(h, p + "feed_forward.w1", base[p + "feed_forward.w1.weight"]))
        up = linear(h, p + "feed_forward.w3", base[p + "feed_forward.w3.weight"])
        x = x + linear(gate * up, p + "feed_forward.w2", base[p + "feed_forward.w2.weight"])
    return linear(rms(x, base["model.norm.weight"]), "output", lora["output.weight"])


@pytest.mark.parametrize("base_layer", [True, False])  # also: safetensors+index / single .bin
def test_converted_llama_matches_internlm2_with_lora(tmp_path, base_layer):
    base = internlm2_folder(tmp_path / "internlm2", bin_file=not base_layer)
    lora = omg_pth(tmp_path / "gcg.pth", base_layer=base_layer)
    model, info = load_internlm2_llama(tmp_path / "internlm2", tmp_path / "gcg.pth", dtype=torch.float32)
    ids = torch.tensor([1, 5, 42, 7, 44, 3, 9, 0])  # 42, 44: rows that exist only after the resize
    with torch.no_grad():
        got = model(input_ids=ids[None]).logits[0]
    want = reference_forward(base, lora, ids)
    assert got.shape == (len(ids), RESIZED)
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
    assert info["llm_base_weights"] == "original" and info["vocab_size"] == RESIZED
    assert info["lora_modules_merged"] == 5 * LAYERS + 1
    assert model.config.rope_parameters["rope_theta"] == THETA


def test_bfloat16_and_nf4_without_bitsandbytes(tmp_path):
    internlm2_folder(tmp_path / "internlm2")
    omg_pth(tmp_path / "gcg.pth")
    model, info = load_internlm2_llama(tmp_path / "internlm2", tmp_path / "gcg.pth")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and info["dtype"] == "bfloat16"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install bitsandbytes"):
            load_internlm2_llama(tmp_path / "internlm2", tmp_path / "gcg.pth", nf4=True)


def _error(tmp_path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_internlm2_llama(tmp_path / "internlm2", tmp_path / "gcg.pth", dtype=torch.float32)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_shard_is_one_line(tmp_path):
    internlm2_folder(tmp_path / "internlm2")
    omg_pth(tmp_path / "gcg.pth")
    (tmp_path / "internlm2" / "model-00002-of-00002.safetensors").unlink()
    message = _error(tmp_path)
    assert "model.safetensors.index.json" in message and "model-00002-of-00002.safetensors" in message


def test_missing_lora_and_wrong_shape_are_listed_unused_keys_only_warn(tmp_path, caplog):
    internlm2_folder(tmp_path / "internlm2")
    omg_pth(tmp_path / "gcg.pth", base_layer=False)
    state = torch.load(tmp_path / "gcg.pth", weights_only=True)
    unused = PTH_PREFIX + "model.layers.7.attention.wo.lora_A.default.weight"
    state[unused] = torch.zeros(4, DIM)
    torch.save(state, tmp_path / "gcg.pth")
    with caplog.at_level("WARNING"):  # upstream's load_state_dict(strict=False) ignores it too
        load_internlm2_llama(tmp_path / "internlm2", tmp_path / "gcg.pth", torch.float32)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert lines == [f"OMG-LLaVA LLM {tmp_path / 'gcg.pth'}: ignored 1 unused llm keys: "
                     + unused.replace(".default.", ".")]
    del state[PTH_PREFIX + "model.layers.1.feed_forward.w2.lora_B.default.weight"]
    state[PTH_PREFIX + "model.layers.0.attention.wo.lora_A.default.weight"] = torch.zeros(4, DIM + 1)
    torch.save(state, tmp_path / "gcg.pth")
    message = _error(tmp_path)
    assert "gcg.pth" in message
    assert "missing keys" in message and "layers.1.feed_forward.w2.lora_B" in message
    assert "shape mismatches" in message and "layers.0.attention.wo.lora_A" in message
    assert "unused" not in message


def test_wrong_base_shape_names_the_folder(tmp_path):
    tensors = internlm2_folder(tmp_path / "internlm2")
    omg_pth(tmp_path / "gcg.pth")
    index = json.loads((tmp_path / "internlm2" / "model.safetensors.index.json").read_text())
    key = "model.layers.0.attention.wqkv.weight"
    shard = index["weight_map"][key]
    names = [k for k, n in index["weight_map"].items() if n == shard]
    save_file({k: (torch.zeros(HEADS * HEAD, DIM) if k == key else tensors[k]) for k in names},
              str(tmp_path / "internlm2" / shard))
    message = _error(tmp_path)
    assert "internlm2" in message and "shape mismatches" in message and key in message


class StubTokenizer:
    """Character ids (ord + 10), BOS=1, eos=2, ``<|im_end|>``/``<|im_start|>`` pre-added like the
    InternLM2 tokenizer_config; the same methods as ``SentencePieceTokenizer``."""

    bos_token_id, eos_token_id, unk_token_id = 1, 2, 0

    def __init__(self):
        self.added = {"<|im_end|>": 5, "<|im_start|>": 6}

    def __len__(self):
        return 300 + sum(i >= 300 for i in self.added.values())

    def add_tokens(self, tokens, special_tokens=True):
        for token in tokens:
            self.added.setdefault(token, len(self))

    def convert_tokens_to_ids(self, token):
        return self.added.get(token, self.unk_token_id)

    def encode(self, text, add_special_tokens=True):
        ids, rest = ([self.bos_token_id] if add_special_tokens else []), text
        while rest:
            token = next((t for t in self.added if rest.startswith(t)), None)
            ids.append(self.added[token] if token else ord(rest[0]) + 10)
            rest = rest[len(token) if token else 1:]
        return ids

    def decode(self, ids, skip_special_tokens=False):
        names = {i: t for t, i in self.added.items()}
        return "".join(names.get(i) or chr(i - 10) for i in ids if i != self.bos_token_id)


def test_prompt_ids_template_and_stop_ids_with_stub():
    tokenizer = StubTokenizer()
    assert prompt.add_special_tokens(tokenizer) == {
        "[SEG]": 300, "<p>": 301, "</p>": 302, "<region>": 303, "<mark>": 304, "<|im_end|>": 5,
        "embedding_rows": 304}
    ids = prompt.build_prompt_ids(tokenizer, prompt.GCG_QUESTIONS[2])
    assert ids[0] == 1 and ids.count(1) == 1 and ids.count(prompt.IMAGE_TOKEN_INDEX) == 1
    at = ids.index(prompt.IMAGE_TOKEN_INDEX)
    assert ids[:at] == tokenizer.encode("<|im_start|>user\n")
    assert tokenizer.decode(ids[at + 1:]) == ("\n" + prompt.GCG_QUESTIONS[2]
                                              + "<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.stop_ids(tokenizer) == {2, 5}
    assert len(prompt.GCG_QUESTIONS) == 6 and prompt.GCG_QUESTIONS[0].startswith(
        "Could you please give me a detailed description of the image? Please respond with "
        "interleaved segmentation masks")


def test_sentencepiece_tokenizer(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    import io

    model = io.BytesIO()
    text = ["Could you please give me a detailed description of the image?",
            "a man riding a horse on the beach", "user assistant"] * 10
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=80,
                                   model_type="bpe", hard_vocab_limit=False, character_coverage=1.0,
                                   user_defined_symbols=["<|im_end|>", "<|im_start|>"],
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    entry = {"special": True, "lstrip": False, "rstrip": False, "normalized": False}
    config = {"tokenizer_class": "InternLM2Tokenizer", "add_bos_token": True,
              "added_tokens_decoder": {"3": {"content": "<|im_end|>", **entry},
                                       "4": {"content": "<|im_start|>", **entry}}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = prompt.load_tokenizer(tmp_path)
    assert isinstance(tokenizer, prompt.SentencePieceTokenizer)
    pieces = tokenizer.sp.get_piece_size()
    ids = prompt.add_special_tokens(tokenizer)
    assert [ids[t] for t in ("[SEG]", "<p>", "</p>", "<region>", "<mark>")] == list(range(pieces, pieces + 5))
    assert ids["embedding_rows"] == pieces + 4 and len(tokenizer) == pieces + 5
    prompt_ids = prompt.build_prompt_ids(tokenizer)
    at = prompt_ids.index(prompt.IMAGE_TOKEN_INDEX)
    # BOS, <|im_start|>, sentencepiece("user\n"); the second chunk has no BOS
    assert prompt_ids[:at] == [1, 4, *tokenizer.sp.encode("user\n")] and prompt_ids.count(1) == 1
    tail = "\n" + prompt.GCG_QUESTIONS[0]
    assert prompt_ids[at + 1:] == [*tokenizer.sp.encode(tail), 3, *tokenizer.sp.encode("\n"), 4,
                                   *tokenizer.sp.encode("assistant\n")]
    assert prompt.stop_ids(tokenizer) == {2, 3}
    answer = [*tokenizer.sp.encode("a man"), ids["<p>"], *tokenizer.sp.encode("horse"), ids["</p>"],
              ids["[SEG]"], 3]
    text = prompt.decode(tokenizer, answer)
    assert "<p>" in text and "</p> [SEG] <|im_end|>" in text and "horse" in text


def test_sentencepiece_tokenizer_with_the_tokens_already_pieces(tmp_path):
    """transformers 4.36 ``_add_tokens`` (tokenization_utils.py:492-503) registers a token that is
    already a piece under the piece's id, and text is split on it: [SEG], <p>, </p> keep their
    piece ids, only <region> and <mark> get new ones, and each encodes as one id."""
    spm = pytest.importorskip("sentencepiece")
    import io

    model = io.BytesIO()
    text = ["a man riding a horse on the beach", "user assistant description image"] * 10
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=60,
                                   model_type="bpe", hard_vocab_limit=False, character_coverage=1.0,
                                   user_defined_symbols=["<|im_end|>", "<|im_start|>", "[SEG]", "<p>", "</p>"],
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    tokenizer = prompt.load_tokenizer(tmp_path)
    sp, pieces = tokenizer.sp, tokenizer.sp.get_piece_size()
    assert sp.encode("[SEG]", out_type=str)[0] == "▁"  # what taking [0] of sentencepiece's ids gave
    ids = prompt.add_special_tokens(tokenizer)
    assert {t: ids[t] for t in ("[SEG]", "<p>", "</p>")} == {t: sp.piece_to_id(t) for t in ("[SEG]", "<p>", "</p>")}
    assert (ids["<region>"], ids["<mark>"]) == (pieces, pieces + 1)
    assert ids["embedding_rows"] == pieces + 1 and len(tokenizer) == pieces + 2
    assert tokenizer.add_tokens(["[SEG]", "<region>", "<new>"]) == 1  # only <new> is new
    answer = "a man <p>horse</p>[SEG] on<region>"
    assert tokenizer.encode(answer, add_special_tokens=False) == [
        *sp.encode("a man "), ids["<p>"], *sp.encode("horse"), ids["</p>"], ids["[SEG]"], *sp.encode(" on"),
        ids["<region>"]]
    assert "</p> [SEG]" in prompt.decode(tokenizer, [ids["</p>"], ids["[SEG]"]])


def _edit_state(path: Path, edit, key: str | None = "state_dict") -> None:
    state = torch.load(path, weights_only=True)
    edit(state[key] if key else state)
    torch.save(state, path)


def test_unexpected_keys_warn_and_are_recorded_missing_ones_stop(tmp_path, caplog):
    """Upstream loads every file with strict=False: unknown keys are one warning line per part,
    listed in metrics.json (``model_deviations.load_warnings``); a missing key still stops."""
    extra = make_tiny_omg_llava(tmp_path / "omg")
    _edit_state(extra / SEG_FILE, lambda s: s.update({f"panoptic_head.new_{i}.weight": torch.zeros(1) for i in range(6)}))
    _edit_state(extra / GCG_FILE, lambda s: s.update({PTH_PREFIX + "model.extra.weight": torch.zeros(1),
                                                "projector.model.extra": torch.zeros(1)}), None)
    with caplog.at_level("WARNING"):
        loaded = load_omg_llava(**loader_kwargs(extra))
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 3 and all("\n" not in line for line in lines), lines
    assert "ignored 6 unexpected: panoptic_head.new_0.weight" in lines[0] and lines[0].endswith("(+1 more)")
    assert SEG_FILE in lines[0] and lines[1].endswith(f"{GCG_FILE}: ignored 1 unexpected: projector.model.extra")
    assert lines[2].endswith(f"{GCG_FILE}: ignored 1 unused llm keys: {PTH_PREFIX}model.extra.weight")
    assert loaded.deviations["load_warnings"] == lines
    _edit_state(extra / SEG_FILE, lambda s: s.pop("panoptic_head.query_embed.weight"))
    with pytest.raises(CheckpointError, match=f"{SEG_FILE}.*1 missing: panoptic_head.query_embed.weight"):
        load_omg_llava(**loader_kwargs(extra))
