"""OMG-LLaVA's LLM (InternLM2-chat-7B + the GCG ``.pth``'s LoRA) as a plain ``LlamaForCausalLM``.

Upstream (docs/upstream/omg_llava.md §1.4, §4.2) builds InternLM2 from its remote code, 4-bit NF4 via
bitsandbytes, wraps it with peft LoRA (r=512, alpha=256: scale 0.5) on every linear layer, and
loads the resized ``tok_embeddings`` / ``output`` and the LoRA weights from the ``.pth`` with
``load_state_dict(strict=False)``. Here, without remote code, peft or xtuner:

* the base folder is read shard by shard (safetensors or ``.bin``, with or without an index) and
  each tensor is converted as in ``InternLM/InternLM tools/convert2llama.py``: ``wqkv`` rows are
  grouped per KV head as ``(kv_heads, q_per_kv + 2, head_dim)`` -- the first ``q_per_kv`` slots
  are q, then k, then v -- and no RoPE permute is needed (InternLM2 and HF Llama both use
  ``rotate_half``; convert2llama.py copies q/k rows as they are);
* LoRA is merged, ``W + scale * B @ A`` in float32, into the packed ``wqkv`` BEFORE it is split,
  and into ``wo``, ``w1``, ``w2``, ``w3`` and (if the .pth has it) ``output``;
* ``tok_embeddings`` and ``output`` come from the .pth (92548 rows after OMG_LLaVA's
  ``_add_special_tokens``), not from the base folder (92544 rows);
* RoPE is plain with ``rope_theta``: xtuner's ``dispatch_modules`` replaces InternLM2's rotary
  embedding (and its dynamic-NTK ``rope_scaling``) with a plain one (docs/upstream/omg_llava.md §1.4);
* ``nf4=True`` first rounds each base linear weight through bitsandbytes' NF4 (blocksize 64,
  double quant), as the 4-bit base upstream trained and runs on (docs/upstream/omg_llava.md §7.2).

The model is allocated once, in ``dtype``, and filled tensor by tensor: no second full copy.
Every problem (missing shard or key, shape mismatch, unused .pth key) is raised as one
``CheckpointError`` line naming the file.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from altp.models.errors import CheckpointError, raise_problems, warn_unexpected

log = logging.getLogger(__name__)

LORA_SCALE = 256 / 512  # LoraConfig(r=512, lora_alpha=256) in the finetune configs
PTH_PREFIX = "llm.base_model.model."  # OMG_LLaVA.llm is a peft PeftModelForCausalLM
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "rms_norm_eps", "vocab_size")
# InternLM2 per-layer linear -> Llama name(s); every one of them carries LoRA upstream
LINEARS = {"attention.wqkv": None, "attention.wo": "self_attn.o_proj",
           "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
           "feed_forward.w2": "mlp.down_proj"}
NORMS = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
FROM_PTH = ("model.tok_embeddings.weight", "output.weight")  # resized copies live in the .pth


def _raise(path: Path, problems: list[tuple[str, list[str]]]) -> None:
    raise_problems(f"OMG-LLaVA LLM {path}", problems)


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"OMG-LLaVA LLM {folder}: config.json is missing")
    config = json.loads(path.read_text())
    _raise(path, [("missing fields", [f for f in CONFIG_FIELDS if f not in config])])
    if config.get("bias", False):  # convert2llama.py asserts the same
        raise CheckpointError(f"OMG-LLaVA LLM {path}: bias=true InternLM2 cannot be mapped to Llama")
    return config


def llama_config(config: dict, vocab_size: int) -> LlamaConfig:
    """InternLM2 field names -> LlamaConfig; ``rope_scaling`` dropped (plain RoPE, see above)."""
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
        rms_norm_eps=config["rms_norm_eps"], rope_theta=config.get("rope_theta", 10000.0),
        max_position_embeddings=config.get("max_position_embeddings", 32768),
        bos_token_id=1, eos_token_id=2, pad_token_id=2,  # InternLM2Tokenizer: pad = </s>
        tie_word_embeddings=False, attention_bias=False, attn_implementation="sdpa")


def read_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A flat ``torch.save`` state dict, or an mmengine checkpoint's ``state_dict`` (memory-mapped)."""
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch.save files cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} {path}: expected a state dict, got {type(state).__name__}")
    return state



def llm_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The .pth's ``llm.*`` tensors, renamed: prefix off, peft's ``.base_layer`` and ``.default``
    adapter name dropped."""
    return {k[len(PTH_PREFIX):].replace(".base_layer.", ".").replace(".default.", "."): v
            for k, v in state.items() if k.startswith(PTH_PREFIX)}


def _shard_files(folder: Path) -> list[Path]:
    index = next((folder / n for n in INDEX_FILES if (folder / n).is_file()), None)
    if index is not None:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        absent = [n for n in names if not (folder / n).is_file()]
        if absent:
            raise CheckpointError(f"OMG-LLaVA LLM {index}: {len(absent)} of {len(names)} shard(s) "
                                  f"missing: {', '.join(absent)}")
        return [folder / n for n in names]
    single = [folder / n for n in SINGLE_FILES if (folder / n).is_file()]
    if not single:
        raise CheckpointError(f"OMG-LLaVA LLM {folder}: no weights ({' / '.join(INDEX_FILES + SINGLE_FILES)})")
    return single[:1]


class _Shard:
    """Lazy access to one shard: safetensors reads one tensor at a time, .bin is mmapped."""

    def __init__(self, path: Path):
        self.path = path
        if path.name.endswith(".safetensors"):
            self._st = safe_open(str(path), framework="pt")
            self.shapes = {k: tuple(self._st.get_slice(k).get_shape()) for k in self._st.keys()}
        else:
            try:  # mmap: pages are read when a tensor is copied, not all at once
                self._bin = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) torch.save format cannot be mmapped
                self._bin = torch.load(path, map_location="cpu", weights_only=True)
            self.shapes = {k: tuple(v.shape) for k, v in self._bin.items()}

    def get(self, key: str) -> torch.Tensor:
        return self._st.get_tensor(key) if hasattr(self, "_st") else self._bin[key]


def _expected_base(config: dict) -> dict[str, tuple[int, ...]]:
    """InternLM2 key -> shape for the layers and the final norm (config.json's dimensions)."""
    d, ffn, heads = config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads)
    head_dim = d // heads
    shapes = {"model.norm.weight": (d,)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "attention.wqkv.weight": ((heads + 2 * kv) * head_dim, d),
                       p + "attention.wo.weight": (d, heads * head_dim),
                       p + "feed_forward.w1.weight": (ffn, d), p + "feed_forward.w3.weight": (ffn, d),
                       p + "feed_forward.w2.weight": (d, ffn),
                       p + "attention_norm.weight": (d,), p + "ffn_norm.weight": (d,)})
    return shapes


def _check_pth(path: Path, pth: dict, base: dict[str, tuple[int, ...]], hidden: int) -> None:
    """Embedding and head (same shape, ``hidden`` wide), one LoRA pair per linear layer (the
    head's pair is optional), ranks and widths consistent; any other ``llm.*`` key warns."""
    linears = {k[: -len(".weight")]: s for k, s in base.items() if len(s) == 2}
    missing = [k for k in FROM_PTH if k not in pth]
    wrong = []
    if not missing:
        emb, head = tuple(pth[FROM_PTH[0]].shape), tuple(pth[FROM_PTH[1]].shape)
        if emb[1:] != (hidden,) or head != emb:
            wrong.append(f"{FROM_PTH[0]} {list(emb)} and {FROM_PTH[1]} {list(head)} (hidden {hidden})")
        if "output.lora_A.weight" in pth or "output.lora_B.weight" in pth:
            linears["output"] = head
    for stem, (out_dim, in_dim) in linears.items():
        a_key, b_key = stem + ".lora_A.weight", stem + ".lora_B.weight"
        missing += [k for k in (a_key, b_key) if k not in pth]
        if a_key in pth and b_key in pth:
            a, b = tuple(pth[a_key].shape), tuple(pth[b_key].shape)
            if len(a) != 2 or len(b) != 2 or a[0] != b[1] or a[1] != in_dim or b[0] != out_dim:
                wrong.append(f"{a_key} {list(a)} / {b_key} {list(b)} for {stem} [{out_dim}, {in_dim}]")
    used = set(FROM_PTH) | {f"{stem}.lora_{x}.weight" for stem in linears for x in "AB"}
    unused = sorted(k for k in pth if k not in used)
    _raise(path, [("missing keys", [PTH_PREFIX + k for k in missing]), ("shape mismatches", wrong)])
    warn_unexpected(f"OMG-LLaVA LLM {path}", [PTH_PREFIX + k for k in unused], "unused llm keys")


def nf4_roundtrip(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as bitsandbytes' NF4 Linear4bit stores it (fp16 in, blocksize 64, double-quant
    statistics) and dequantizes it for the matmul: what upstream's LoRA sits on."""
    import bitsandbytes.functional as bnbf  # checked by the caller

    device = "cuda" if torch.cuda.is_available() else "cpu"
    packed, state = bnbf.quantize_4bit(weight.to(device, torch.float16), blocksize=64,
                                       quant_type="nf4", compress_statistics=True)
    return bnbf.dequantize_4bit(packed, state).float().cpu()


def split_wqkv(wqkv: torch.Tensor, heads: int, kv_heads: int) -> tuple[torch.Tensor, ...]:
    """convert2llama.py: ``(h gs d) dim -> h gs d dim`` with gs = heads/kv_heads + 2, then q, k, v."""
    groups = heads // kv_heads
    grouped = wqkv.reshape(kv_heads, groups + 2, -1, wqkv.shape[-1])
    q, k, v = torch.split(grouped, [groups, 1, 1], dim=1)
    return tuple(t.reshape(-1, wqkv.shape[-1]) for t in (q, k, v))


def load_internlm2_llama(folder: str | Path, pth: str | Path, dtype: torch.dtype = torch.bfloat16,
                         lora_scale: float = LORA_SCALE, nf4: bool = False,
                         state: dict[str, torch.Tensor] | None = None) -> tuple[LlamaForCausalLM, dict]:
    """(``LlamaForCausalLM`` in ``dtype``, info for metrics.json) from an InternLM2 HF folder and
    an OMG-LLaVA ``.pth``: LoRA merged, vocabulary resized to the .pth's embedding rows.
    ``state``: the .pth's contents when the caller has already read them (it is named by ``pth``)."""
    folder, pth_path = Path(folder), Path(pth)
    if nf4 and importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("nf4=True needs bitsandbytes: pip install bitsandbytes")
    config = read_config(folder)
    base = _expected_base(config)
    weights = llm_tensors(state if state is not None else read_state(pth_path, "OMG-LLaVA checkpoint"))
    _check_pth(pth_path, weights, base, config["hidden_size"])

    shards = [_Shard(path) for path in _shard_files(folder)]
    where = {key: shard for shard in shards for key in shard.shapes}
    wrong = [f"{k} {list(where[k].shapes[k])} in the file, {list(s)} expected"
             for k, s in base.items() if k in where and where[k].shapes[k] != s]
    unexpected = [k for k in where if k not in base and k not in FROM_PTH and not k.endswith("inv_freq")]
    _raise(folder, [("missing keys", [k for k in base if k not in where]), ("shape mismatches", wrong)])
    warn_unexpected(f"OMG-LLaVA LLM {folder}", unexpected)

    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    vocab = weights[FROM_PTH[0]].shape[0]
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(config, vocab))
    model = model.to(dtype).to_empty(device="cpu")  # one uninitialised copy, already in dtype
    params = dict(model.named_parameters())

    def merged(stem: str, weight: torch.Tensor, quantize: bool) -> torch.Tensor:
        weight = nf4_roundtrip(weight) if quantize else weight.float()
        if stem + ".lora_A.weight" in weights:
            a, b = weights[stem + ".lora_A.weight"].float(), weights[stem + ".lora_B.weight"].float()
            weight = weight + lora_scale * (b @ a)
        return weight

    with torch.no_grad():
        for key in base:  # layer order; shards are lazy (safetensors per tensor, .bin mmapped)
            tensor, name = where[key].get(key), key[: -len(".weight")]
            module = name.split(".", 3)[-1]  # 'attention.wqkv', 'ffn_norm', ... ('model.norm': 'norm')
            prefix = name[: len(name) - len(module)]
            if module == "attention.wqkv":
                q, k, v = split_wqkv(merged(name, tensor, nf4), heads, kv_heads)
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                    params[f"{prefix}self_attn.{proj}.weight"].copy_(part)
            elif module in LINEARS:
                params[f"{prefix}{LINEARS[module]}.weight"].copy_(merged(name, tensor, nf4))
            elif module in NORMS:
                params[f"{prefix}{NORMS[module]}.weight"].copy_(tensor)
            else:
                params[key].copy_(tensor)  # model.norm.weight
        params["model.embed_tokens.weight"].copy_(weights[FROM_PTH[0]])
        # upstream's head is not quantized (bnb skips the output layer), so no nf4 here
        params["lm_head.weight"].copy_(merged("output", weights[FROM_PTH[1]], False))
    model.model.rotary_emb = LlamaRotaryEmbedding(config=model.config)  # buffer was left empty
    model.eval()
    n_lora = sum(k.endswith(".lora_A.weight") for k in weights)
    info = {"llm_base_weights": "nf4-dequantized" if nf4 else "original", "lora_scale": lora_scale,
            "lora_modules_merged": n_lora, "vocab_size": vocab, "dtype": str(dtype).replace("torch.", "")}
    log.info("OMG-LLaVA LLM: %s", info)
    return model, info
