"""OMG-LLaVA's visual encoder (upstream ``OMGSegVisualEncoder``, docs/upstream/omg_llava.md §1.1-1.2, 1.5).

ConvNeXt stages -> deformable-attention pixel decoder -> 300-query Mask2Former decoder with
open-vocabulary classes -> the perception prior. ``encode`` returns what the projector needs
(pixel tokens = pixel-shuffled stride-32 map ‖ prior, the queries, which are valid) and keeps
the pixel-decoder outputs that [SEG] decoding reuses (upstream caches them on the head).
Frozen and fp32, as upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from altp.models.omg_llava.convnext import ConvNeXt
from altp.models.omg_llava.mask2former import OMGMask2FormerHead, perception_prior, pixel_shuffle
from altp.models.omg_llava.pixel_decoder import MSDeformAttnPixelDecoder

SHUFFLE = 2  # pixel_shuffle_down_ratio: 32 x 32 stride-32 map -> 16 x 16 tokens


@dataclass
class Encoded:
    pixel_tokens: torch.Tensor  # [B, grid², 4 * C_last + 2 * feat]: shuffled CLIP ‖ perception prior
    object_features: torch.Tensor  # [B, Q, 2 * feat]: [query_feat ‖ query_pos] of every query
    valid: torch.Tensor  # [B, Q] bool: queries that win the argmax at >= 1 grid cell (the K objects)
    mask_features: torch.Tensor  # [B, feat, S/4, S/4], reused by [SEG] decoding
    memorys: list[torch.Tensor]  # pixel-decoder memories, stride 32, 16, 8


class OMGSeg(nn.Module):
    def __init__(self, backbone: ConvNeXt, pixel_decoder: MSDeformAttnPixelDecoder, head: OMGMask2FormerHead,
                 image_size: int = 1024):
        super().__init__()
        self.backbone, self.pixel_decoder, self.head = backbone, pixel_decoder, head
        self.image_size = image_size
        side = image_size // 32 // SHUFFLE
        self.grid = (side, side)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> Encoded:
        """Normalised pixels [B, 3, S, S] (fp32) -> tokens, queries and the [SEG] cache."""
        stages = self.backbone(pixels.float())
        mask_features, memorys = self.pixel_decoder(stages)
        cls_logits, mask_logits, query_feat, query_pos = self.head.predict(mask_features, memorys)
        prior, _, valid = perception_prior(cls_logits, mask_logits, query_feat, query_pos,
                                           self.image_size, self.grid[0])
        pixel_tokens = torch.cat([pixel_shuffle(stages[-1], SHUFFLE), prior], dim=-1)
        return Encoded(pixel_tokens, torch.cat([query_feat, query_pos], dim=-1), valid, mask_features, memorys)

    @torch.no_grad()
    def segment(self, queries: torch.Tensor, encoded: Encoded, image_index: torch.Tensor) -> torch.Tensor:
        """[SEG] queries [N, 2 * feat] (after projector_text2vision) -> mask logits [N, S/4, S/4]."""
        return self.head.segment_llm(queries.float(), encoded.mask_features, encoded.memorys, image_index)
