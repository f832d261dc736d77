"""OMG-Seg's pixel decoder (mmdet 3.x ``MSDeformAttnPixelDecoder``) in plain PyTorch.

Upstream pieces and where each one below comes from (all verified against the source):

* ``MSDeformAttnPixelDecoder`` -- mmdet ``mmdet/models/layers/msdeformattn_pixel_decoder.py``:
  1x1 ``input_convs`` (``ConvModule``: conv **with bias** + GroupNorm, no activation) on the
  ``num_levels`` lowest-resolution backbone maps, built "from top to down", so
  ``input_convs[0]`` takes stride 32, ``[1]`` stride 16, ``[2]`` stride 8; per level a 2-D sine
  position encoding plus ``level_encoding.weight[i]``; reference points from
  ``MlvlPointGenerator`` (offset 0.5) divided by (w, h) x stride, the same for every level
  (valid ratios are all 1: OMG-LLaVA never pads inside the batch); the encoder memory split back
  per level (low -> high resolution); an FPN step for the stride-4 map (``lateral_convs``: 1x1
  conv **without bias** + GN; ``output_convs``: 3x3 conv without bias + GN + ReLU) on the
  bilinearly upsampled (``align_corners=False``) stride-8 memory; ``mask_feature`` 1x1 conv.
* ``ConvModule`` naming (``conv``, ``gn``; order conv -> norm -> act) -- mmcv ``cnn/bricks``
  (``conv_module.py``, ``norm.py::infer_abbr`` maps ``nn.GroupNorm`` to ``gn``; eps 1e-5).
* Encoder (``Mask2FormerTransformerEncoder``, ``mask2former_layers.py``) over
  ``DeformableDetrTransformerEncoderLayer`` (``deformable_detr_layers.py`` / ``detr_layers.py``):
  post-norm ``x = norms[0](self_attn(x, pos)); x = norms[1](ffn(x))``; the reference points are
  the decoder's own, passed in (not ``get_encoder_reference_points``; identical when unpadded).
* ``FFN`` -- mmcv ``cnn/bricks/transformer.py``: ``layers.0.0`` Linear, ReLU, ``layers.1``
  Linear, residual added inside.
* ``MultiScaleDeformableAttention`` and ``multi_scale_deformable_attn_pytorch`` -- mmcv
  ``mmcv/ops/multi_scale_deform_attn.py``: value = ``value_proj(x)`` (no position), queries
  ``x + pos`` give ``sampling_offsets`` (normalised by (W, H) of each level) and softmaxed
  ``attention_weights``; ``grid_sample(2 * loc - 1, bilinear, zeros, align_corners=False)``;
  ``output_proj`` then ``+ x`` (identity inside the attention).
* ``SinePositionalEncoding(num_feats=128, normalize=True)`` -- mmdet
  ``mmdet/models/layers/positional_encoding.py`` (eps 1e-6, scale 2*pi, offset 0, y then x).

Hyper-parameters are OMG-LLaVA's config (``omg_llava_7b_finetune_8gpus.py``): 256 channels,
6 layers, 8 heads, 3 levels, 4 points, FFN 1024, ``GroupNorm(32)``, ReLU. Parameter names equal
the checkpoint names under ``panoptic_head.pixel_decoder.`` (attribute ``pixel_decoder`` of
``Mask2FormerVideoSemSamHead``, itself ``panoptic_head`` of ``OMGSegVisualEncoder``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from altp.models.omg_llava.convnext import load_exact

PIXEL_DECODER_PREFIX = "panoptic_head.pixel_decoder."


def ms_deform_attn(value: torch.Tensor, spatial_shapes, sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor) -> torch.Tensor:
    """mmcv ``multi_scale_deformable_attn_pytorch``.

    value [B, sum(h*w), heads, d]; spatial_shapes [(h, w)] per level; sampling_locations
    [B, Q, heads, levels, points, 2] as (x, y) in [0, 1]; attention_weights
    [B, Q, heads, levels, points] -> [B, Q, heads * d]."""
    bs, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        # [B, h*w, heads, d] -> [B*heads, d, h, w]
        value_l = values[level].flatten(2).transpose(1, 2).reshape(bs * heads, dim, h, w)
        # [B, Q, heads, points, 2] -> [B*heads, Q, points, 2]
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # [B*heads, d, Q, points]
    weights = attention_weights.transpose(1, 2).reshape(bs * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(bs, heads * dim, queries).transpose(1, 2).contiguous()


class MultiScaleDeformableAttention(nn.Module):
    """mmcv ``MultiScaleDeformableAttention`` (batch first, dropout 0, value_proj_ratio 1)."""

    def __init__(self, dim: int = 256, num_heads: int = 8, num_levels: int = 3,
                 num_points: int = 4):
        super().__init__()
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: torch.Tensor) -> torch.Tensor:
        """x, pos [B, N, C]; reference_points [B, N, levels, 2] (x, y); spatial_shapes [L, 2]."""
        bs, n, _ = x.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        query = x + pos
        value = self.value_proj(x).view(bs, n, heads, -1)  # no key_padding_mask: nothing padded
        offsets = self.sampling_offsets(query).view(bs, n, heads, levels, points, 2)
        weights = self.attention_weights(query).view(bs, n, heads, levels * points)
        weights = weights.softmax(-1).view(bs, n, heads, levels, points)
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)  # (w, h)
        locations = (reference_points[:, :, None, :, None, :]
                     + offsets / normalizer[None, None, None, :, None, :])
        out = ms_deform_attn(value, spatial_shapes, locations, weights)
        return self.output_proj(out) + x


class FFN(nn.Module):
    """mmcv ``FFN`` (2 fcs, ReLU, dropout 0): ``x + layers(x)``; keys ``layers.0.0``, ``layers.1``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.ReLU()),
                                    nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class EncoderLayer(nn.Module):
    """mmdet ``DeformableDetrTransformerEncoderLayer``: attention -> LN -> FFN -> LN."""

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int, ffn: int):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, num_heads, num_levels, num_points)
        self.ffn = FFN(dim, ffn)
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])

    def forward(self, x, pos, reference_points, spatial_shapes):
        x = self.norms[0](self.self_attn(x, pos, reference_points, spatial_shapes))
        return self.norms[1](self.ffn(x))


class Encoder(nn.Module):
    """mmdet ``Mask2FormerTransformerEncoder``: the layers, no final norm."""

    def __init__(self, num_layers: int, **layer):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(**layer) for _ in range(num_layers)])

    def forward(self, x, pos, reference_points, spatial_shapes):
        for layer in self.layers:
            x = layer(x, pos, reference_points, spatial_shapes)
        return x


class ConvGN(nn.Module):
    """mmcv ``ConvModule`` with a GroupNorm: ``conv`` -> ``gn`` (-> ReLU)."""

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool, groups: int, relu: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias)
        self.gn = nn.GroupNorm(groups, cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gn(self.conv(x))
        return F.relu(x) if self.relu else x


def sine_position_encoding(bs: int, h: int, w: int, num_feats: int, device,
                           temperature: float = 10000.0, eps: float = 1e-6) -> torch.Tensor:
    """mmdet ``SinePositionalEncoding(normalize=True)`` for an all-valid mask: [B, 2F, h, w]."""
    not_mask = torch.ones(bs, h, w, device=device)
    y = not_mask.cumsum(1, dtype=torch.float32)
    x = not_mask.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + eps) * (2 * math.pi)
    x = x / (x[:, :, -1:] + eps) * (2 * math.pi)
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x, pos_y = x[..., None] / dim_t, y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).view(bs, h, w, -1)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).view(bs, h, w, -1)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def grid_reference_points(h: int, w: int, stride: int, device) -> torch.Tensor:
    """mmdet ``MlvlPointGenerator.single_level_grid_priors`` (offset 0.5, x fastest) divided by
    (w, h) x stride, as the pixel decoder does: pixel centres in [0, 1], [h*w, 2] as (x, y)."""
    xs = (torch.arange(w, device=device) + 0.5) * stride
    ys = (torch.arange(h, device=device) + 0.5) * stride
    yy, xx = torch.meshgrid(ys.float(), xs.float(), indexing="ij")
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    return points / torch.tensor([w * stride, h * stride], dtype=torch.float32, device=device)


class MSDeformAttnPixelDecoder(nn.Module):
    """forward(feats: the 4 backbone maps, high -> low resolution) ->
    (mask_features [B, out, H/4, W/4], [memory stride 32, stride 16, stride 8] [B, feat, h, w])."""

    def __init__(self, in_channels=(192, 384, 768, 1536), strides=(4, 8, 16, 32),
                 feat_channels: int = 256, out_channels: int = 256, num_outs: int = 3,
                 num_levels: int = 3, num_layers: int = 6, num_heads: int = 8,
                 num_points: int = 4, ffn_channels: int = 1024, num_groups: int = 32):
        super().__init__()
        self.strides, self.num_outs, self.num_levels = tuple(strides), num_outs, num_levels
        self.num_inputs = n_in = len(in_channels)
        self.feat_channels = feat_channels
        # from top to down (low to high resolution): input_convs[0] eats the stride-32 map
        self.input_convs = nn.ModuleList([
            ConvGN(in_channels[i], feat_channels, 1, True, num_groups, relu=False)
            for i in range(n_in - 1, n_in - num_levels - 1, -1)])
        self.encoder = Encoder(num_layers, dim=feat_channels, num_heads=num_heads,
                               num_levels=num_levels, num_points=num_points, ffn=ffn_channels)
        self.level_encoding = nn.Embedding(num_levels, feat_channels)
        # fpn for the levels that skip the encoder (upstream spells `postional_encoding`,
        # which has no parameters); conv bias is off because GroupNorm follows
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for i in range(n_in - num_levels - 1, -1, -1):
            self.lateral_convs.append(
                ConvGN(in_channels[i], feat_channels, 1, False, num_groups, relu=False))
            self.output_convs.append(
                ConvGN(feat_channels, feat_channels, 3, False, num_groups, relu=True))
        self.mask_feature = nn.Conv2d(feat_channels, out_channels, kernel_size=1)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        bs = feats[0].shape[0]
        inputs, positions, shapes, refs = [], [], [], []
        for i in range(self.num_levels):
            level = self.num_inputs - i - 1
            feat = feats[level]
            h, w = feat.shape[-2:]
            projected = self.input_convs[i](feat)
            pos = sine_position_encoding(bs, h, w, self.feat_channels // 2, feat.device)
            pos = self.level_encoding.weight[i].view(1, -1, 1, 1) + pos
            refs.append(grid_reference_points(h, w, self.strides[level], feat.device))
            inputs.append(projected.flatten(2).transpose(1, 2))
            positions.append(pos.flatten(2).transpose(1, 2))
            shapes.append((h, w))
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=feats[0].device)
        reference_points = torch.cat(refs, 0)[None, :, None].repeat(bs, 1, self.num_levels, 1)
        memory = self.encoder(torch.cat(inputs, 1), torch.cat(positions, 1).to(inputs[0].dtype),
                              reference_points.to(inputs[0].dtype), spatial_shapes)
        memory = memory.transpose(1, 2)  # [B, C, sum(h*w)]
        outs = [m.reshape(bs, -1, h, w)  # low -> high resolution
                for m, (h, w) in zip(memory.split([h * w for h, w in shapes], -1), shapes)]
        # mmdet indexes lateral/output convs with the same i as the loop (exact for 1 extra level)
        for i in range(self.num_inputs - self.num_levels - 1, -1, -1):
            lateral = self.lateral_convs[i](feats[i])
            y = lateral + F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear",
                                        align_corners=False)
            outs.append(self.output_convs[i](y))
        return self.mask_feature(outs[-1]), outs[:self.num_outs]


def infer_pixel_decoder_config(tensors: dict[str, torch.Tensor],
                               prefix: str = PIXEL_DECODER_PREFIX, num_points: int = 4) -> dict:
    """Constructor kwargs from the tensors' shapes under ``prefix``. Heads and points only occur
    as a product in the shapes, so ``num_points`` is given (upstream 4); the GroupNorm group
    count and the strides are not in the shapes either (pass them to the constructor)."""
    def get(name: str) -> torch.Tensor:
        return tensors[prefix + name]

    def count(stem: str) -> int:
        return len({k[len(prefix + stem):].split(".")[0] for k in tensors
                    if k.startswith(prefix + stem)})

    num_levels, feat = get("level_encoding.weight").shape
    # input_convs[0] is the lowest resolution; lateral_convs[0] the stride-4 map (1 extra level)
    ins = [get(f"input_convs.{i}.conv.weight").shape[1] for i in reversed(range(num_levels))]
    extra = count("lateral_convs.")
    ins = [get(f"lateral_convs.{i}.conv.weight").shape[1] for i in range(extra)] + ins
    heads_points = get("encoder.layers.0.self_attn.attention_weights.weight").shape[0] // num_levels
    return {"in_channels": tuple(ins), "feat_channels": feat,
            "out_channels": get("mask_feature.weight").shape[0], "num_levels": num_levels,
            "num_layers": count("encoder.layers."), "num_heads": heads_points // num_points,
            "num_points": num_points,
            "ffn_channels": get("encoder.layers.0.ffn.layers.0.0.weight").shape[0]}


def load_released(module: MSDeformAttnPixelDecoder, tensors: dict[str, torch.Tensor],
                  prefix: str = PIXEL_DECODER_PREFIX, source: str = "checkpoint") -> None:
    """Load ``module`` from the released ``omg_seg_convl.pth`` names (1:1 under ``prefix``)."""
    named = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    names = {k: prefix + k for k in set(named) | set(module.state_dict())}
    load_exact(module, named, names, f"{source} ({prefix}*)")


def released_state_dict(module: MSDeformAttnPixelDecoder,
                        prefix: str = PIXEL_DECODER_PREFIX) -> dict[str, torch.Tensor]:
    """The inverse of ``load_released``: ``module``'s weights under the released names."""
    return {prefix + k: v.detach().clone() for k, v in module.state_dict().items()}
