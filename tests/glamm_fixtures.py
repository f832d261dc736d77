"""A tiny GLaMM-GCG checkpoint folder in the released layout, and a tiny CLIP folder.

The GLaMM folder mirrors ``MBZUAI/GLaMM-GCG`` (docs/upstream/glamm.md §1.3): ``config.json`` with GLaMM's
fields, two ``pytorch_model-0000x-of-00002.bin`` shards + ``pytorch_model.bin.index.json``, LLM
and projector in bf16, SAM and ``text_hidden_fcs`` in fp32, 4.28's ``rotary_emb.inv_freq`` keys,
a few ``region_encoder`` tensors. SAM's keys are written from segment-anything's module tree
(``sam_shapes``), independently of the loader's key mapping.

The tokenizer is LLaMA-shaped (byte-fallback BPE, Metaspace, GLaMM's 7 added tokens at
32000..32006) with the real pieces at their real ids for every prompt token, so both prompt modes
can be checked. It is stored as ``tokenizer.json``, transformers 5's own format: the released
``tokenizer.model`` needs sentencepiece to convert, which the test environment lacks.

The LLM is random but wired so that greedy decoding after the prompt's final ':' walks a fixed
chain, ``A <p> picture </p> [SEG] . </s>``: chain tokens get orthonormal, large embeddings and
each one's lm_head row points at its predecessor's, so the small random layers cannot change the
argmax. That gives every end-to-end run a phrase and a mask.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM, LlamaTokenizer
from transformers.tokenization_utils_base import generate_merges

from altp.models.glamm.prompt import REFERENCE_IDS

TINY = {"hidden": 32, "layers": 4, "heads": 4, "ffn": 64, "clip_width": 16}
VOCAB = 32000  # LLaMA's pieces; GLaMM adds 7 tokens
ADDED = ["<im_start>", "<im_end>", "<bbox>", "<point>", "[SEG]", "<p>", "</p>"]  # train.py order
PIECES = {  # the real LLaMA pieces of the reference prompt (docs/upstream/glamm.md §1.5) and of the scripted answer
    13: "<0x0A>", 259: "▁▁", 263: "▁a", 268: "▁▁▁▁", 278: "▁the", 280: "le", 304: "▁to", 310: "▁of",
    319: "▁A", 322: "▁and", 362: "ation", 363: "▁for", 366: "▁you", 385: "▁an", 411: "▁with",
    450: "▁The", 568: "ite", 592: "▁me", 975: "▁over", 1001: "ER", 1006: "▁inter", 1234: "▁answer",
    1248: "▁pol", 1493: "view", 1546: "▁between", 1799: "SS", 1967: "▁image", 2367: "▁give",
    3113: "▁please", 3148: "▁US", 3529: "▁Please", 4076: "▁gives", 5155: "▁questions", 5199: "▁human",
    5633: "▁parts", 6089: "▁answers", 6139: "▁description", 6590: "▁corresponding", 7623: "▁picture",
    8128: "▁provides", 8444: "▁helpful", 9047: "IST", 10049: "▁respond", 10511: "aved",
    10768: "▁segment", 11105: "▁mask", 12758: "▁curious", 13173: "▁detailed", 13563: "▁chat",
    13566: "ANT", 20255: "▁assistant", 21082: "▁intelligence", 23116: "▁artificial",
    23323: "Could", 29871: "▁", 29879: "s", 29889: ".", 29892: ",", 29901: ":", 29915: "'", 29973: "?",
}
ANSWER = [319, 32005, 7623, 32006, 32004, 29889, 2]  # ▁A <p> ▁picture </p> [SEG] . </s>
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def sam_shapes(width=16, depth=2, global_blocks=(1,), grid=8, patch=8, window=4, heads=2, mlp=32,
               out=16, mask_in=16, decoder_mlp=32, decoder_depth=2, iou_hidden=16, masks=4) -> dict:
    """segment-anything ``Sam`` tensor names -> shapes (``build_sam.py``; ViT-H: width 1280, depth
    32, global (7, 15, 23, 31), grid 64, patch 16, window 14, heads 16, mlp 5120, out 256,
    decoder_mlp 2048, iou_hidden 256)."""
    shapes = {}

    def linear(name, n_in, n_out):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n_out, n_in), (n_out,)

    def norm(name, n):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n,), (n,)

    shapes["image_encoder.patch_embed.proj.weight"] = (width, 3, patch, patch)
    shapes["image_encoder.patch_embed.proj.bias"] = (width,)
    shapes["image_encoder.pos_embed"] = (1, grid, grid, width)
    for i in range(depth):
        block, span = f"image_encoder.blocks.{i}", grid if i in global_blocks else window
        norm(f"{block}.norm1", width)
        linear(f"{block}.attn.qkv", width, 3 * width)
        linear(f"{block}.attn.proj", width, width)
        shapes[f"{block}.attn.rel_pos_h"] = shapes[f"{block}.attn.rel_pos_w"] = (2 * span - 1, width // heads)
        norm(f"{block}.norm2", width)
        linear(f"{block}.mlp.lin1", width, mlp)
        linear(f"{block}.mlp.lin2", mlp, width)
    shapes["image_encoder.neck.0.weight"] = (out, width, 1, 1)
    norm("image_encoder.neck.1", out)
    shapes["image_encoder.neck.2.weight"] = (out, out, 3, 3)
    norm("image_encoder.neck.3", out)

    shapes["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = (2, out // 2)
    for name in [f"point_embeddings.{i}" for i in range(4)] + ["not_a_point_embed", "no_mask_embed"]:
        shapes[f"prompt_encoder.{name}.weight"] = (1, out)
    shapes["prompt_encoder.mask_downscaling.0.weight"] = (mask_in // 4, 1, 2, 2)
    shapes["prompt_encoder.mask_downscaling.0.bias"] = (mask_in // 4,)
    norm("prompt_encoder.mask_downscaling.1", mask_in // 4)
    shapes["prompt_encoder.mask_downscaling.3.weight"] = (mask_in, mask_in // 4, 2, 2)
    shapes["prompt_encoder.mask_downscaling.3.bias"] = (mask_in,)
    norm("prompt_encoder.mask_downscaling.4", mask_in)
    shapes["prompt_encoder.mask_downscaling.6.weight"] = (out, mask_in, 1, 1)
    shapes["prompt_encoder.mask_downscaling.6.bias"] = (out,)

    def attention(name, inner):
        for proj in ("q", "k", "v"):
            linear(f"{name}.{proj}_proj", out, inner)
        linear(f"{name}.out_proj", inner, out)

    decoder = "mask_decoder.transformer"
    for i in range(decoder_depth):
        layer = f"{decoder}.layers.{i}"
        attention(f"{layer}.self_attn", out)
        attention(f"{layer}.cross_attn_token_to_image", out // 2)
        attention(f"{layer}.cross_attn_image_to_token", out // 2)
        for k in range(1, 5):
            norm(f"{layer}.norm{k}", out)
        linear(f"{layer}.mlp.lin1", out, decoder_mlp)
        linear(f"{layer}.mlp.lin2", decoder_mlp, out)
    attention(f"{decoder}.final_attn_token_to_image", out // 2)
    norm(f"{decoder}.norm_final_attn", out)
    shapes["mask_decoder.iou_token.weight"] = (1, out)
    shapes["mask_decoder.mask_tokens.weight"] = (masks, out)
    shapes["mask_decoder.output_upscaling.0.weight"] = (out, out // 4, 2, 2)
    shapes["mask_decoder.output_upscaling.0.bias"] = (out // 4,)
    norm("mask_decoder.output_upscaling.1", out // 4)
    shapes["mask_decoder.output_upscaling.3.weight"] = (out // 4, out // 8, 2, 2)
    shapes["mask_decoder.output_upscaling.3.bias"] = (out // 8,)
    for i in range(masks):
        for k, (n_in, n_out) in enumerate([(out, out), (out, out), (out, out // 8)]):
            linear(f"mask_decoder.output_hypernetworks_mlps.{i}.layers.{k}", n_in, n_out)
    for k, (n_in, n_out) in enumerate([(out, iou_hidden), (iou_hidden, iou_hidden), (iou_hidden, masks)]):
        linear(f"mask_decoder.iou_prediction_head.layers.{k}", n_in, n_out)
    return shapes


def tiny_tokenizer() -> LlamaTokenizer:
    """LLaMA-shaped tokenizer (see the module docstring); merges as transformers 5 derives them
    from a sentencepiece vocabulary (``generate_merges``)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    vocab.update({piece: i for i, piece in PIECES.items()})
    free = (i for i in range(259, VOCAB) if i not in PIECES)
    pieces = [p for p in PIECES.values() if not p.startswith("<0x")]
    # BPE needs every character, then each prefix on the way to a piece; characters first (lower
    # ids merge earlier), as in LLaMA, where e.g. '▁▁▁' (1678) ranks after '▁▁▁▁' (268)
    parts = [c for p in pieces for c in p] + [p[:k] for p in pieces for k in range(2, len(p))]
    for part in parts:
        if part not in vocab:
            vocab[part] = next(free)
    vocab.update({f"tok{i}": i for i in free})  # filler; decodes as a plain word
    tokenizer = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), legacy=False, add_bos_token=True)
    tokenizer.add_tokens(ADDED, special_tokens=True)  # train.py::setup_tokenizer_and_special_tokens
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _scripted_llm(seed: int) -> LlamaForCausalLM:
    """Tiny random Llama whose greedy answer after ':' is ANSWER (see the module docstring)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB + len(ADDED), hidden_size=TINY["hidden"],
                         intermediate_size=TINY["ffn"], num_hidden_layers=TINY["layers"],
                         num_attention_heads=TINY["heads"], num_key_value_heads=TINY["heads"],
                         rms_norm_eps=1e-5, max_position_embeddings=4096, tie_word_embeddings=False)
    llm = LlamaForCausalLM(config)
    chain = [REFERENCE_IDS[-1], *ANSWER]
    basis = torch.linalg.qr(torch.randn(TINY["hidden"], len(chain)))[0].T * math.sqrt(TINY["hidden"])
    with torch.no_grad():
        for k, token in enumerate(chain):
            llm.model.embed_tokens.weight[token] = basis[k]
            if k:
                llm.lm_head.weight[token] = basis[k - 1]
    return llm


def _glamm_config(clip_width: int) -> dict:
    """GLaMM's config.json fields (docs/upstream/glamm.md §1.3, inferred) at the tiny LLM's size."""
    return {
        "architectures": ["GLaMMForCausalLM"], "model_type": "llava", "torch_dtype": "bfloat16",
        "transformers_version": "4.28.0.dev0", "vocab_size": VOCAB + len(ADDED),
        "hidden_size": TINY["hidden"], "intermediate_size": TINY["ffn"],
        "num_hidden_layers": TINY["layers"], "num_attention_heads": TINY["heads"],
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
        "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "tie_word_embeddings": False, "use_cache": False,
        "vision_tower": "openai/clip-vit-large-patch14-336", "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_hidden_size": clip_width,
        "pretrain_mm_mlp_adapter": None, "mm_use_im_start_end": True, "with_region": True,
        "num_level_reg_features": 4, "out_dim": 16, "bbox_token_idx": 32002, "image_aspect": "square",
    }


def glamm_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of the tiny checkpoint under GLaMM's key names, in the released dtypes."""
    hidden, clip_width = TINY["hidden"], TINY["clip_width"]
    tensors = {k: v.to(torch.bfloat16) for k, v in _scripted_llm(seed).state_dict().items()}
    head_dim = hidden // TINY["heads"]
    for i in range(TINY["layers"]):  # transformers 4.28 saved RoPE's inverse frequencies
        tensors[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = \
            1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    gen = torch.Generator().manual_seed(seed)
    bf16 = {"model.mm_projector.0.weight": (hidden, clip_width), "model.mm_projector.0.bias": (hidden,),
            "model.mm_projector.2.weight": (hidden, hidden), "model.mm_projector.2.bias": (hidden,),
            "model.region_encoder.roi_align.updims.weight": (hidden, 8),
            "model.region_encoder.mlvl_fuse.input_conv.0.weight": (8, 10, 1, 1)}
    fp32 = {"model.text_hidden_fcs.0.0.weight": (hidden, hidden), "model.text_hidden_fcs.0.0.bias": (hidden,),
            "model.text_hidden_fcs.0.2.weight": (16, hidden), "model.text_hidden_fcs.0.2.bias": (16,),
            **{f"model.grounding_encoder.{k}": v for k, v in sam_shapes().items()}}
    for shapes, dtype in ((bf16, torch.bfloat16), (fp32, torch.float32)):
        for name, shape in shapes.items():
            tensors[name] = (torch.randn(shape, generator=gen) * 0.2).to(dtype)
    # mask token 0's hypernetwork outputs (1, 0.6): with these random weights the two upscaled
    # channels have opposite signs and a ratio near -0.6 that varies over the image, so the
    # masks are neither empty nor full
    hyper = "model.grounding_encoder.mask_decoder.output_hypernetworks_mlps.0.layers.2"
    tensors[f"{hyper}.weight"].zero_()
    tensors[f"{hyper}.bias"].copy_(torch.tensor([1.0, 0.6]))
    return tensors


def write_glamm_checkpoint(folder: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """The released layout: 2 .bin shards + index, config.json, tokenizer files. Returns the tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = glamm_tensors(seed)
    names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    # like the release: the LLM in the first shard, the rest (SAM, projections) in the second
    first = {k: v for k, v in tensors.items() if k.startswith(("model.embed_tokens", "model.layers"))}
    second = {k: v for k, v in tensors.items() if k not in first}
    for name, shard in zip(names, (first, second)):
        torch.save(shard, folder / name)
    weight_map = {k: names[0] if k in first else names[1] for k in tensors}
    size = sum(v.numel() * v.element_size() for v in tensors.values())
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(_glamm_config(TINY["clip_width"]), indent=2))
    (folder / "generation_config.json").write_text(json.dumps(
        {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "use_cache": False}))
    tiny_tokenizer().save_pretrained(folder)
    return tensors


def write_clip(folder: Path, seed: int = 0) -> CLIPModel:
    """A tiny ``openai/clip-vit-large-patch14-336`` look-alike: a whole CLIPModel (text tower too)
    whose 48 px / patch 2 vision tower has the same 24 x 24 grid, and the legacy preprocessor file."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"image_size": 48, "patch_size": 2, "hidden_size": TINY["clip_width"],
                       "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=8)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 48, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "resample": 3, "size": 48}, indent=2))
    return model
