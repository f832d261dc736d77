"""OMG-LLaVA GCG speed at full size with random weights (docs/upstream/omg_llava.md §1, issue 7).

Shapes: ConvNeXt-L at 1024 px, the 6-layer deformable pixel decoder, the 9-layer 300-query
Mask2Former decoder (133 classes), the projector, and InternLM2-chat-7B as Llama (32 x 4096,
8 KV heads, FFN 14336, vocab 92548), bf16 LLM and fp32 perception on a GPU. The prompt has the
real template's length (the GCG question, no tokenizer needed). Weights are random: times do not
depend on their values, but nothing stops at a stop token, so every caption is exactly
``--new-tokens`` long and ``--segs`` states are decoded as [SEG] masks. K (object tokens) is
whatever the random head gives; it is reported.

Reported, median of ``--repeats`` after one warm-up:

* ``perception_ms``: OMG-Seg + projector (``engine_inputs``), once per image;
* ``prefill_ms``: per pruner (none / fastv / pdrop / altp) and keep (1.0 / 0.25 / 0.1 of the
  256 pixel tokens), the engine's prefill time (pruner included) beside the FLOPs ratio of its
  token schedule (eval.flops);
* ``time_to_first_token_ms`` at keep ``--ttft-keep`` (0.1): the image to the first token
  (OMG-Seg, projector, splice, pruned prefill) for none / fastv / altp; ALTP twice, with its SLIC
  on the padded square counted serially (``prefetch=false``) and without (done ahead by the data
  pipeline, ``prefetch=true``), beside the SLIC time alone;
* ``decode_ms_per_token``: cached decoding, unpruned;
* ``end_to_end_ms``: one image, perception + prefill + a ``--new-tokens`` caption + the masks,
  per pruner at keep 0.1 and unpruned.

    python scripts/bench_omg_llava.py --json                     # GPU, full size
    OMP_NUM_THREADS=1 python scripts/bench_omg_llava.py --tiny   # small shapes on CPU (smoke run)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import bench_utils  # noqa: E402  (scripts/, beside this file)

from altp.data.synthetic import render_scene  # noqa: E402
from altp.engine import Clock, PruningEngine  # noqa: E402
from altp.models.omg_llava.convnext import ConvNeXt  # noqa: E402
from altp.models.omg_llava.mask2former import OMGMask2FormerHead  # noqa: E402
from altp.models.omg_llava.model import ObjectPixelProjector, OMGLLaVA, text_to_vision  # noqa: E402
from altp.models.omg_llava.perception import SHUFFLE, OMGSeg  # noqa: E402
from altp.models.omg_llava.pixel_decoder import MSDeformAttnPixelDecoder  # noqa: E402
from altp.models.omg_llava.prompt import IMAGE_TOKEN_INDEX  # noqa: E402

PRUNERS = ("none", "fastv", "pdrop", "altp")
KEEPS = (1.0, 0.25, 0.1)
PROMPT_TEXT = 41  # ids of the InternLM2 chat prompt around <image> with the first GCG question (approx.)
SEG, STOP = 92544, [2, 92542]
FULL = {
    "image_size": 1024, "dims": (192, 384, 768, 1536), "depths": (3, 3, 27, 3),
    "decoder": dict(feat_channels=256, out_channels=256, num_layers=6, ffn_channels=1024),
    "head": dict(feat_channels=256, out_channels=256, num_queries=300, num_layers=9, ffn_channels=2048,
                 num_classes=133, cls_embed_dim=768, llm_decoder=True),
    "llm": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=92548),
    "pdrop_layers": [8, 16, 24],
}
TINY = {  # a 8 x 8 pixel-token grid; everything else small
    "image_size": 512, "dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1),
    "decoder": dict(feat_channels=32, out_channels=32, num_layers=1, ffn_channels=64),
    "head": dict(feat_channels=32, out_channels=32, num_queries=12, num_layers=2, ffn_channels=64,
                 num_classes=5, cls_embed_dim=16, llm_decoder=True),
    "llm": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=92548),
    "pdrop_layers": [2, 3, 4],
}


def build(shapes: dict, device: torch.device, dtype: torch.dtype) -> OMGLLaVA:
    """A randomly initialised OMG-LLaVA of these shapes on ``device``: LLM in ``dtype``, the rest fp32."""
    with torch.device(device):
        backbone = ConvNeXt(shapes["dims"], shapes["depths"])
        decoder = MSDeformAttnPixelDecoder(in_channels=shapes["dims"], **shapes["decoder"])
        head = OMGMask2FormerHead(**shapes["head"])
        embed = torch.nn.functional.normalize(torch.randn(shapes["head"]["num_classes"], 1,
                                                          shapes["head"]["cls_embed_dim"]), dim=-1)
        head.set_class_embed(embed)
        perception = OMGSeg(backbone, decoder, head, shapes["image_size"]).eval()
        feat, hidden = shapes["head"]["feat_channels"], shapes["llm"]["hidden_size"]
        pixel_dim = SHUFFLE ** 2 * shapes["dims"][-1]
        projector = ObjectPixelProjector(pixel_dim + 2 * feat, 2 * feat, hidden, pixel_dim)
        text2vision = text_to_vision(hidden, 2 * feat)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            llm = LlamaForCausalLM(LlamaConfig(**shapes["llm"], rms_norm_eps=1e-5, rope_theta=1e6,
                                               tie_word_embeddings=False, attn_implementation="sdpa"))
        finally:
            torch.set_default_dtype(default)
    ids = [1] + [100] * 4 + [IMAGE_TOKEN_INDEX] + [100] * (PROMPT_TEXT - 5)
    return OMGLLaVA(perception, projector, text2vision, llm.eval(), None, [ids], SEG, STOP).eval()


def pruner(name: str, keep: float, shapes: dict, text_tokens: int):
    return bench_utils.pruner(name, keep, shapes["llm"], text_tokens, shapes["pdrop_layers"])


def end_to_end(model: OMGLLaVA, engine: PruningEngine, image: Image.Image, new_tokens: int, segs: int):
    inputs, encoded = model.engine_inputs([image])
    out = engine.generate(inputs, new_tokens)
    return model.masks(image, out.hidden[0, 1:segs + 1], encoded, 0)


@torch.no_grad()
def bench(tiny: bool, new_tokens: int, segs: int, repeats: int, ttft_keep: float = 0.1) -> dict:
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    shapes = TINY if tiny else FULL
    model = build(shapes, device, dtype)
    clock = Clock(device)
    image = Image.fromarray(render_scene(0, image_size=480).image).resize((640, 480))  # not square
    inputs, _ = model.engine_inputs([image])
    objects = inputs.inputs_embeds.shape[1] - PROMPT_TEXT - model.n_visual - 1
    full_tokens = inputs.inputs_embeds.shape[1]
    llm = model.llm.config
    perception = bench_utils.median_ms(lambda: model.engine_inputs([image]), repeats, clock)
    text_tokens = PROMPT_TEXT + 1 + objects  # what the pruners see as text (the object tokens included)

    prefill, e2e = {}, {}
    for name in PRUNERS:
        for keep in (1.0,) if name == "none" else KEEPS:
            engine = PruningEngine(model.llm, pruner(name, keep, shapes, text_tokens))
            prefill.setdefault(name, {})[str(keep)] = bench_utils.prefill_row(engine, inputs, repeats, full_tokens, llm)
            if keep in (1.0, 0.1):
                e2e[f"{name} {keep}"] = bench_utils.median_ms(
                    lambda engine=engine: end_to_end(model, engine, image, new_tokens, segs), max(1, repeats // 2), clock)
    ttft = bench_utils.time_to_first_token(
        model.llm, lambda prepared: model.engine_inputs([image], prepared=prepared)[0], model.encoder_view(image),
        model.grid, {name: pruner(name, ttft_keep, shapes, text_tokens) for name in ("none", "fastv", "altp")},
        repeats, clock)
    decode = PruningEngine(model.llm).generate(inputs, new_tokens)
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
        "shapes": "tiny" if tiny else "full (ConvNeXt-L 1024, OMG-Seg head, InternLM2-7B as Llama)",
        "prefill_tokens": full_tokens, "pixel_tokens": model.n_visual, "object_tokens": objects,
        "perception_ms": perception, "prefill_ms": prefill, "time_to_first_token_ms": {"keep": ttft_keep, **ttft},
        "decode_ms_per_token": round(1e3 * decode.timing["decode"] / decode.timing["decode_steps"], 3),
        "end_to_end_ms": e2e, "new_tokens": new_tokens, "segs": segs, "repeats": repeats,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = bench_utils.arguments(__doc__.splitlines()[0], new_tokens=100, stop="stop token")
    args = parser.parse_args(argv)
    if not 1 <= args.segs < args.new_tokens:
        parser.error("--segs must be between 1 and --new-tokens - 1")
    result = bench(args.tiny, args.new_tokens, args.segs, args.repeats, args.ttft_keep)
    if args.json:
        print(json.dumps(result, indent=1))
        return result
    print(f"{result['device']} {result['dtype']}, {result['shapes']}: prefill {result['prefill_tokens']} "
          f"tokens ({result['pixel_tokens']} pixel, {result['object_tokens']} object)")
    print(f"  perception + projector: {result['perception_ms']:.1f} ms")
    bench_utils.print_prefill(result["prefill_ms"])
    ttft = dict(result["time_to_first_token_ms"])
    bench_utils.print_ttft(ttft, ttft.pop("keep"))
    print(f"  decode: {result['decode_ms_per_token']:.2f} ms / token")
    for run, ms in result["end_to_end_ms"].items():
        print(f"  end to end ({args.new_tokens} tokens, {args.segs} masks) {run}: {ms:.1f} ms")
    return result


if __name__ == "__main__":
    main()
