"""GLaMM's SAM on transformers' ``SamModel``: key names, config from shapes, pre/post-processing.

GLaMM's grounding encoder is segment-anything's ``Sam`` (ViT-H) with four small changes, its key
names untouched (docs/upstream/glamm.md §1.2). We load it into HF ``SamModel`` (§6.1 option B): prefixes are
renamed as transformers' ``models/sam/convert_sam_to_hf.py`` does (``KEYS_TO_MODIFY_MAPPING`` plus
the hypernetwork-MLP renumbering), and the positional-encoding matrix is copied to
``shared_image_embedding``. HF builds the dense-PE grid in the dtype of that matrix, which is
GLaMM's change 2 (so bf16 works and matches the reference's bf16 PE); changes 1 and 4 live in
``segment`` and ``postprocess_masks`` below; change 3 (fp16-only autocast) does not apply to bf16.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import SamConfig

PREFIX = "model.grounding_encoder."
PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53])  # eval/utils.py::grounding_image_ecoder_preprocess
PIXEL_STD = torch.tensor([58.395, 57.12, 57.375])
MASK_DECODER_HEADS = 8  # SAM's TwoWayTransformer: not visible in any tensor shape

# (segment-anything prefix, SamModel prefix); {n} and {m} stand for a number. The first rule whose
# prefix matches wins; the list runs from specific to general in both columns, so it maps both ways.
_RULES = [
    ("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
    ("image_encoder.blocks.{n}.norm{m}.", "vision_encoder.layers.{n}.layer_norm{m}."),
    ("image_encoder.blocks.{n}.", "vision_encoder.layers.{n}."),
    ("image_encoder.neck.0.", "vision_encoder.neck.conv1."),
    ("image_encoder.neck.1.", "vision_encoder.neck.layer_norm1."),
    ("image_encoder.neck.2.", "vision_encoder.neck.conv2."),
    ("image_encoder.neck.3.", "vision_encoder.neck.layer_norm2."),
    ("image_encoder.", "vision_encoder."),
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
     "prompt_encoder.shared_embedding.positional_embedding"),
    ("prompt_encoder.point_embeddings.", "prompt_encoder.point_embed."),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ("prompt_encoder.", "prompt_encoder."),
    ("mask_decoder.transformer.layers.{n}.norm{m}.", "mask_decoder.transformer.layers.{n}.layer_norm{m}."),
    ("mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    # SAM's 3-layer MLPs (every SAM has depth 3): layers.0/1/2 -> proj_in / layers.0 / proj_out
    ("mask_decoder.output_hypernetworks_mlps.{n}.layers.0.", "mask_decoder.output_hypernetworks_mlps.{n}.proj_in."),
    ("mask_decoder.output_hypernetworks_mlps.{n}.layers.1.", "mask_decoder.output_hypernetworks_mlps.{n}.layers.0."),
    ("mask_decoder.output_hypernetworks_mlps.{n}.layers.2.", "mask_decoder.output_hypernetworks_mlps.{n}.proj_out."),
    ("mask_decoder.iou_prediction_head.layers.0.", "mask_decoder.iou_prediction_head.proj_in."),
    ("mask_decoder.iou_prediction_head.layers.1.", "mask_decoder.iou_prediction_head.layers.0."),
    ("mask_decoder.iou_prediction_head.layers.2.", "mask_decoder.iou_prediction_head.proj_out."),
    ("mask_decoder.", "mask_decoder."),
]
# SamModel keeps a second, tied copy of the PE matrix for the image-wide positional encoding
TIED_PE = ("shared_image_embedding.positional_embedding",
           "prompt_encoder.shared_embedding.positional_embedding")


def _compile(pattern: str) -> re.Pattern:
    escaped = re.escape(pattern)
    return re.compile(escaped.replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{m\}", r"(?P<m>\d+)"))


_FORWARD = [(_compile(a), b) for a, b in _RULES]
_BACKWARD = [(_compile(b), a) for a, b in _RULES]


def _rename(key: str, rules) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict()) + key[match.end():]
    return None


def to_hf(key: str) -> str | None:
    """segment-anything name (prefix stripped) -> SamModel name; None if no rule applies."""
    return _rename(key, _FORWARD)


def to_glamm(key: str) -> str | None:
    """SamModel name -> segment-anything name; None for the tied PE copy and unknown names."""
    return None if key == TIED_PE[0] else _rename(key, _BACKWARD)


def sam_config(shapes: dict[str, tuple[int, ...]]) -> SamConfig:
    """The SamConfig whose tensors have these (segment-anything named) shapes: ViT-H for GLaMM.

    Raises KeyError naming a tensor the inference needs but the checkpoint lacks.
    """
    grid, width = shapes["image_encoder.pos_embed"][1], shapes["image_encoder.pos_embed"][3]
    patch = shapes["image_encoder.patch_embed.proj.weight"][-1]
    depth = _count(shapes, "image_encoder.blocks.{}.attn.qkv.weight")
    rel_rows = [shapes[f"image_encoder.blocks.{i}.attn.rel_pos_h"][0] for i in range(depth)]
    windowed = [rows for rows in rel_rows if rows != 2 * grid - 1]  # rel-pos spans 2 * window - 1
    hidden = shapes["mask_decoder.iou_token.weight"][1]
    vision = dict(
        hidden_size=width, num_hidden_layers=depth, image_size=grid * patch, patch_size=patch,
        num_attention_heads=width // shapes["image_encoder.blocks.0.attn.rel_pos_h"][1],
        window_size=(windowed[0] + 1) // 2 if windowed else grid,
        global_attn_indexes=[i for i, rows in enumerate(rel_rows) if rows == 2 * grid - 1],
        mlp_dim=shapes["image_encoder.blocks.0.mlp.lin1.weight"][0],
        output_channels=shapes["image_encoder.neck.0.weight"][0],
        num_pos_feats=shapes["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"][1])
    prompt = dict(
        hidden_size=hidden, image_size=grid * patch, patch_size=patch,
        mask_input_channels=shapes["prompt_encoder.mask_downscaling.3.weight"][0],
        num_point_embeddings=_count(shapes, "prompt_encoder.point_embeddings.{}.weight"))
    decoder = dict(
        hidden_size=hidden, num_attention_heads=MASK_DECODER_HEADS,
        num_hidden_layers=_count(shapes, "mask_decoder.transformer.layers.{}.self_attn.q_proj.weight"),
        mlp_dim=shapes["mask_decoder.transformer.layers.0.mlp.lin1.weight"][0],
        attention_downsample_rate=hidden // shapes[
            "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"][0],
        num_multimask_outputs=shapes["mask_decoder.mask_tokens.weight"][0] - 1,
        iou_head_hidden_dim=shapes["mask_decoder.iou_prediction_head.layers.0.weight"][0])
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def _count(shapes: dict, pattern: str) -> int:
    n = 0
    while pattern.format(n) in shapes:
        n += 1
    if n == 0:
        raise KeyError(pattern.format(0))
    return n


def sam_pixels(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 HxWx3 -> ([3, size, size] normalised and zero-padded, (newh, neww)).

    segment-anything's ``ResizeLongestSide(size).apply_image`` (PIL bilinear, sides rounded with
    ``int(x + 0.5)``), then GLaMM's ``grounding_image_ecoder_preprocess``: pixel mean/std, zero pad
    right and bottom (docs/upstream/glamm.md §3.2 step 3).
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = np.asarray(Image.fromarray(image).resize((neww, newh), Image.BILINEAR), np.float32)
    pixels = ((torch.from_numpy(resized) - PIXEL_MEAN) / PIXEL_STD).permute(2, 0, 1)
    return F.pad(pixels, (0, size - neww, 0, size - newh)), (newh, neww)


def segment(sam, image_embedding: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Low-resolution mask logits [N, 1, 4g, 4g] for N text prompts [N, C] on one image [1, C, g, g].

    GLaMM's ``prompt_encoder(text_embeds=...)`` (change 1) reduces to: sparse = the projected
    [SEG] embedding alone, dense = ``no_mask_embed`` everywhere; the decoder's tokens are
    [iou, mask tokens, seg]; ``multimask_output=False`` keeps mask token 0 (docs/upstream/glamm.md §3.2 step 7).
    """
    grid = image_embedding.shape[-1]
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, grid, grid)
    masks, _ = sam.mask_decoder(
        image_embeddings=image_embedding,
        image_positional_embeddings=sam.get_image_wide_positional_embeddings(),
        sparse_prompt_embeddings=prompts[None, :, None, :].to(image_embedding.dtype),
        dense_prompt_embeddings=dense, multimask_output=False)
    return masks[0]


def postprocess_masks(low_res: torch.Tensor, size: int, resized: tuple[int, int],
                      original: tuple[int, int]) -> torch.Tensor:
    """``Sam.postprocess_masks`` with GLaMM's change 4: fp32 bilinear to size x size, crop the
    unpadded part, bilinear to the original (H, W) -> fp32 logits [N, H, W] (docs/upstream/glamm.md §3.2 step 8)."""
    masks = F.interpolate(low_res.float(), (size, size), mode="bilinear", align_corners=False)
    masks = masks[..., :resized[0], :resized[1]]
    return F.interpolate(masks, original, mode="bilinear", align_corners=False)[:, 0]
