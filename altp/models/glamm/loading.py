"""Read the released ``MBZUAI/GLaMM-GCG`` folder into plain PyTorch / transformers modules.

Never ``AutoModel`` on that folder: its ``model_type="llava"`` now means HF's own, different Llava
(docs/upstream/glamm.md §6.1). Instead:

* the shards (``pytorch_model-0000x-of-0000y.bin`` + ``pytorch_model.bin.index.json``, or the
  safetensors equivalent, or one unsharded file) are read with ``torch.load(weights_only=True)``;
* ``config.json`` gives the LLM's dimensions; every other dimension (CLIP width of the projector,
  SAM's size, ...) comes from the tensors' shapes, so a tiny checkpoint of the same layout loads
  through the same code;
* keys go, unchanged, to ``LlamaForCausalLM`` (minus 4.28's persistent ``rotary_emb.inv_freq``),
  ``mm_projector`` (Linear, GELU, Linear), ``text_hidden_fcs`` (Linear, ReLU, Linear, Dropout;
  the paper says GELU, the code ReLU) and, renamed by ``sam.to_hf``, HF ``SamModel``;
  ``region_encoder`` (unused for GCG, needs mmcv) is skipped with a log line (docs/upstream/glamm.md §1.2-1.3).

Anything that does not fit -- a missing shard, missing keys, shape mismatches -- is collected and
raised as one ``CheckpointError`` line that lists it. Unexpected keys are ignored with one warning
line (``errors.warn_unexpected``), as upstream's ``from_pretrained`` does.

``round_bf16``: every checkpoint tensor goes through bf16 first, as upstream's loading does
(``eval/gcg/infer.py:120-122`` loads with ``torch_dtype=torch.bfloat16``; its fp32 recipe is
``model.float()`` afterwards, ``:135``): a no-op for the bf16 LLM and projector, a rounding of the
fp32 SAM and ``text_hidden_fcs``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, SamModel
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from altp.models.errors import CheckpointError, listed, warn_unexpected
from altp.models.glamm import sam

log = logging.getLogger(__name__)

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
PROJECTOR, TEXT_FCS, REGION = "model.mm_projector.", "model.text_hidden_fcs.", "model.region_encoder."
ROTARY = ".rotary_emb.inv_freq"  # a persistent buffer in transformers 4.28, recomputed today
LLM_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "rms_norm_eps", "max_position_embeddings")


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"GLaMM checkpoint {folder}: config.json is missing")
    config = json.loads(path.read_text())
    missing = [field for field in LLM_FIELDS if field not in config]
    if missing:
        raise CheckpointError(f"GLaMM checkpoint {folder}: config.json lacks {', '.join(missing)}")
    return config


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the shards named by the index file (or of the one unsharded file)."""
    index = next((folder / name for name in INDEX_FILES if (folder / name).is_file()), None)
    if index is not None:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [name for name in SINGLE_FILES if (folder / name).is_file()][:1]
        if not files:
            raise CheckpointError(f"GLaMM checkpoint {folder}: no weights "
                                  f"({' / '.join(INDEX_FILES + SINGLE_FILES)})")
    absent = [name for name in files if not (folder / name).is_file()]
    if absent:
        raise CheckpointError(f"GLaMM checkpoint {folder}: {len(absent)} of {len(files)} shard(s) missing: "
                              f"{', '.join(absent)} (named in {index.name})")
    tensors = {}
    for name in files:
        path = folder / name
        if name.endswith(".safetensors"):
            tensors.update(load_file(str(path)))
        else:  # mmap: the 16.8 GB of shards are not copied into memory before they are needed
            tensors.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    return tensors


def build_llm(config: dict) -> LlamaForCausalLM:
    """LLaMA-7B-shaped ``LlamaForCausalLM`` on the meta device, dims from GLaMM's config.json."""
    llama = LlamaConfig(
        **{field: config[field] for field in LLM_FIELDS},
        num_key_value_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
        bos_token_id=1, eos_token_id=2, pad_token_id=0,  # infer.py sets these (docs/upstream/glamm.md §3.1)
        tie_word_embeddings=False, attn_implementation="sdpa")
    with torch.device("meta"):
        return LlamaForCausalLM(llama)


def projector(clip_width: int, hidden: int) -> nn.Sequential:
    """LLaVA-1.5 ``mlp2x_gelu``: keys 0.* and 2.* as in the checkpoint."""
    return nn.Sequential(nn.Linear(clip_width, hidden), nn.GELU(), nn.Linear(hidden, hidden))


def text_projection(hidden: int, out_dim: int) -> nn.ModuleList:
    """``GLaMM.py::_initialize_text_projection_layer``: keys 0.0.* and 0.2.*."""
    return nn.ModuleList([nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, out_dim), nn.Dropout(0.0))])


def _checkpoint_key(part: str, local: str) -> str | None:
    """A module's key -> the checkpoint's name for it; None for SamModel's tied PE copy."""
    if part == "llm":
        return local
    if part == "sam":
        original = sam.to_glamm(local)
        return sam.PREFIX + original if original else None
    return (PROJECTOR if part == "projector" else TEXT_FCS) + local


def load_parts(folder: Path, clip_width: int, dtype: torch.dtype,
               round_bf16: bool = False) -> tuple[dict[str, nn.Module], dict]:
    """(modules llm / projector / text_hidden_fcs / sam in ``dtype``, config.json) from ``folder``;
    ``round_bf16``: the tensors rounded through bf16 first (module docstring)."""
    config = read_config(folder)
    tensors = {k: v for k, v in read_tensors(folder).items() if not k.endswith(ROTARY)}
    skipped = [k for k in tensors if k.startswith(REGION)]
    if skipped:
        log.info("GLaMM: skipping %d region_encoder tensors (not used for GCG)", len(skipped))
    tensors = {k: v for k, v in tensors.items() if not k.startswith(REGION)}

    problems, hidden = [], config["hidden_size"]
    if config.get("mm_hidden_size", clip_width) != clip_width:
        problems.append(f"config.json mm_hidden_size={config['mm_hidden_size']} but the CLIP folder's "
                        f"width is {clip_width}")
    sam_shapes = {k[len(sam.PREFIX):]: tuple(v.shape)
                  for k, v in tensors.items() if k.startswith(sam.PREFIX)}
    try:
        sam_config = sam.sam_config(sam_shapes)
    except KeyError as err:
        raise CheckpointError(f"GLaMM checkpoint {folder} does not match the released layout: missing "
                              f"{sam.PREFIX}{err.args[0]} (SAM's shape cannot be read)") from None
    with torch.device("meta"):
        parts = {"llm": build_llm(config), "projector": projector(clip_width, hidden),
                 "text_hidden_fcs": text_projection(hidden, sam_config.prompt_encoder_config.hidden_size),
                 "sam": SamModel(sam_config)}

    expected = {}  # checkpoint key -> (part, key in the part's module, shape)
    for part, module in parts.items():
        for local, value in module.state_dict().items():
            key = _checkpoint_key(part, local)
            if key is not None:
                expected[key] = (part, local, tuple(value.shape))
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} {list(tensors[k].shape)} in the file, {list(shape)} expected"
             for k, (_, _, shape) in expected.items() if k in tensors and tuple(tensors[k].shape) != shape]
    problems += [listed(kind, items) for kind, items in (("missing keys", missing), ("shape mismatches", wrong))
                 if items]
    if problems:
        raise CheckpointError(f"GLaMM checkpoint {folder} does not match the released layout: "
                              + "; ".join(problems))
    warn_unexpected(f"GLaMM checkpoint {folder}", unexpected)

    states = {part: {} for part in parts}
    for key, (part, local, _) in expected.items():
        value = tensors[key]
        states[part][local] = value.to(torch.bfloat16) if round_bf16 and value.is_floating_point() else value
    states["sam"][sam.TIED_PE[0]] = states["sam"][sam.TIED_PE[1]]
    for part, module in parts.items():
        module.load_state_dict(states[part], strict=True, assign=True)
        module.to(dtype).eval()
    llm = parts["llm"]
    llm.model.rotary_emb = LlamaRotaryEmbedding(config=llm.config)  # non-persistent: was left on meta
    return parts, config
