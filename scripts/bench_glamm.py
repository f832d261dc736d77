"""GLaMM-GCG speed at full size with random weights (docs/upstream/glamm.md §4): ours versus GLaMM's procedure.

Shapes: Vicuna-7B (32 x 4096, FFN 11008, vocab 32007), CLIP ViT-L/14-336, SAM ViT-H at 1024 px,
bf16 on a GPU; the prompt is the 83-id reference prompt (658 prefill tokens). Weights are random:
times do not depend on their values, but nothing stops at EOS, so every caption is exactly
``--new-tokens`` long and ``--segs`` of its states are decoded as [SEG] masks.

Reported, median of ``--repeats`` after one warm-up:

* ``prefill_ms``: per pruner (none / fastv / pdrop / altp, from configs/pruner) and keep
  (1.0 / 0.5 / 0.25 / 0.1), the engine's prefill time (pruner included) beside the FLOPs ratio
  of its token schedule (eval.flops);
* ``time_to_first_token_ms`` at keep ``--ttft-keep`` (0.1): the image to the first token (CLIP,
  splice, pruned prefill) for none / fastv / altp; ALTP twice, with its SLIC on the 336 px crop
  counted serially (one request, ``prefetch=false``) and without (done ahead by the data
  pipeline, ``prefetch=true``), beside the SLIC time alone (altp/pipeline.py);
* ``decode_ms_per_token``: cached decoding, unpruned;
* ``end_to_end_ms``, one image and a ``--new-tokens`` caption: ``ours`` = CLIP once, prefill,
  cached decode, SAM once, all masks in one decoder call; ``reference`` = what GLaMM's
  ``generate()`` does with ``use_cache=False``: for every token CLIP, projector, splice and a
  full forward of the whole sequence with eager attention, then text_hidden_fcs over every
  position and SAM.

    python scripts/bench_glamm.py --json                        # GPU, full size
    OMP_NUM_THREADS=1 python scripts/bench_glamm.py --tiny      # small shapes on CPU (smoke run)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    SamConfig,
    SamModel,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import bench_utils  # noqa: E402  (scripts/, beside this file)

from altp.data.synthetic import render_scene  # noqa: E402
from altp.engine import Clock, PruningEngine  # noqa: E402
from altp.models.glamm.loading import projector, text_projection  # noqa: E402
from altp.models.glamm.model import GLaMM  # noqa: E402
from altp.models.glamm.prompt import REFERENCE_IDS  # noqa: E402

PRUNERS = ("none", "fastv", "pdrop", "altp")
KEEPS = (1.0, 0.5, 0.25, 0.1)
FULL = {
    "llm": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "clip": dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                 num_hidden_layers=24, num_attention_heads=16),
    "sam": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                global_attn_indexes=[7, 15, 23, 31]),
    "sam_prompt": {}, "sam_decoder": {}, "pdrop_layers": [8, 16, 24],
}
TINY = {  # same token grid (24 x 24) and prompt; everything else small
    "llm": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4),
    "clip": dict(image_size=48, patch_size=2, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=2),
    "sam": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=[1],
                image_size=64, patch_size=8, window_size=4, mlp_dim=64, output_channels=32, num_pos_feats=16),
    "sam_prompt": dict(hidden_size=32, image_size=64, patch_size=8),
    "sam_decoder": dict(hidden_size=32, mlp_dim=64, iou_head_hidden_dim=32),
    "pdrop_layers": [2, 3, 4],
}


def build(shapes: dict, device: torch.device, dtype: torch.dtype) -> GLaMM:
    """A randomly initialised GLaMM of these shapes, created directly on the device in ``dtype``."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            llm = LlamaForCausalLM(LlamaConfig(vocab_size=32007, **shapes["llm"], rms_norm_eps=1e-5,
                                               tie_word_embeddings=False, attn_implementation="sdpa"))
            clip = CLIPVisionModel(CLIPVisionConfig(**shapes["clip"]))
            sam = SamModel(SamConfig(vision_config=shapes["sam"],
                                     prompt_encoder_config=shapes["sam_prompt"],
                                     mask_decoder_config=shapes["sam_decoder"]))
            hidden = llm.config.hidden_size
            parts = (projector(clip.config.hidden_size, hidden),
                     text_projection(hidden, sam.config.prompt_encoder_config.hidden_size))
    finally:
        torch.set_default_dtype(default)
    side = clip.config.image_size
    processor = CLIPImageProcessorPil(size={"shortest_edge": side},
                                      crop_size={"height": side, "width": side})
    return GLaMM(llm, clip, *parts, sam, processor, list(REFERENCE_IDS)).eval()


def pruner(name: str, keep: float, shapes: dict):
    return bench_utils.pruner(name, keep, shapes["llm"], len(REFERENCE_IDS) - 1, shapes["pdrop_layers"])


def ours(model: GLaMM, image: np.ndarray, new_tokens: int, segs: int) -> torch.Tensor:
    out = PruningEngine(model.llm).generate(model.engine_inputs([image]), new_tokens)
    return model.mask_logits(image, out.hidden[0, :segs])


def reference(model: GLaMM, image: np.ndarray, new_tokens: int, segs: int) -> torch.Tensor:
    """GLaMM's generate() without a cache: every step re-encodes the image and re-runs the whole
    sequence (eager attention, as transformers 4.28), then text_hidden_fcs over all positions."""
    pixels, _ = model.clip_inputs([image])
    embed = model.llm.model.embed_tokens
    start, generated = model.image_start, []
    text = torch.tensor([i for i in model.ids if i >= 0], device=model.llm.device)
    for _ in range(new_tokens):
        ids = torch.cat([text, torch.tensor(generated, dtype=torch.long, device=text.device)])
        embeds = torch.cat([embed(ids[:start]), model.visual_tokens(pixels)[0], embed(ids[start:])])[None]
        out = model.llm(inputs_embeds=embeds, use_cache=False, output_hidden_states=True)
        generated.append(int(out.logits[0, -1].argmax()))
    states = out.hidden_states[-1][0]
    model.text_hidden_fcs[0](states)  # GLaMM projects every position, then keeps the [SEG] ones
    return model.mask_logits(image, states[-segs:])


@torch.no_grad()
def bench(tiny: bool, new_tokens: int, segs: int, repeats: int, ttft_keep: float = 0.1) -> dict:
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    shapes = TINY if tiny else FULL
    model = build(shapes, device, dtype)
    clock = Clock(device)
    image = render_scene(0, image_size=480).image  # GranD-f images are larger than any encoder input
    inputs = model.engine_inputs([image])
    llm = model.llm.config
    full_tokens = inputs.inputs_embeds.shape[1]

    prefill = {}
    for name in PRUNERS:
        for keep in (1.0,) if name == "none" else KEEPS:
            engine = PruningEngine(model.llm, pruner(name, keep, shapes))
            prefill.setdefault(name, {})[str(keep)] = bench_utils.prefill_row(engine, inputs, repeats, full_tokens, llm)
    ttft = bench_utils.time_to_first_token(
        model.llm, lambda prepared: model.engine_inputs([image], prepared), model.encoder_view(Image.fromarray(image)),
        model.grid, {name: pruner(name, ttft_keep, shapes) for name in ("none", "fastv", "altp")}, repeats, clock)
    decode = PruningEngine(model.llm).generate(inputs, new_tokens)
    e2e_ours = bench_utils.median_ms(lambda: ours(model, image, new_tokens, segs), repeats, clock)
    model.llm.set_attn_implementation("eager")
    try:
        e2e_reference = bench_utils.median_ms(lambda: reference(model, image, new_tokens, segs),
                                  max(1, repeats // 3), clock)  # slow: fewer repeats
    finally:
        model.llm.set_attn_implementation("sdpa")
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
        "shapes": "tiny" if tiny else "full (Vicuna-7B, CLIP-L/336, SAM ViT-H)",
        "prefill_tokens": full_tokens,
        "prefill_ms": prefill,
        "time_to_first_token_ms": {"keep": ttft_keep, **ttft},
        "decode_ms_per_token": round(1e3 * decode.timing["decode"] / decode.timing["decode_steps"], 3),
        "end_to_end_ms": {"ours": e2e_ours, "reference": e2e_reference,
                          "speedup": round(e2e_reference / e2e_ours, 2)},
        "new_tokens": new_tokens, "segs": segs, "repeats": repeats, "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = bench_utils.arguments(__doc__.splitlines()[0], new_tokens=128, stop="EOS")
    args = parser.parse_args(argv)
    if not 1 <= args.segs <= args.new_tokens:
        parser.error("--segs must be between 1 and --new-tokens")
    result = bench(args.tiny, args.new_tokens, args.segs, args.repeats, args.ttft_keep)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['device']} {result['dtype']}, {result['shapes']}, "
              f"prefill {result['prefill_tokens']} tokens")
        bench_utils.print_prefill(result["prefill_ms"])
        ttft = dict(result["time_to_first_token_ms"])
        bench_utils.print_ttft(ttft, ttft.pop("keep"))
        print(f"  decode: {result['decode_ms_per_token']:.2f} ms / token")
        e2e = result["end_to_end_ms"]
        print(f"  end to end, {args.new_tokens} tokens: ours {e2e['ours']:.1f} ms, reference "
              f"{e2e['reference']:.1f} ms ({e2e['speedup']}x)")
    return result


if __name__ == "__main__":
    main()
