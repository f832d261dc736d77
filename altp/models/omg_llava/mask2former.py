"""OMG-Seg's frozen ``Mask2FormerVideoSemSamHead`` (inference only) in plain PyTorch.

Upstream: ``lxtGH/OMG-Seg`` ``omg_llava/omg_llava/model/omg_seg/mask2former_vid_semanticsam.py``
(``forward``, ``_forward_head``, ``forward_logit``, ``forward_llm_seg``, ``_forward_head_llm``,
``predict``), ``.../omg_seg/utils.py`` (``mask_pool``), ``.../omg_seg/omg_seg_visual_encoder.py``
(``pixel_shuffle_feat``, ``panoptic_postprocess``); mmdet 3.x ``Mask2FormerTransformerDecoder`` /
``Mask2FormerTransformerDecoderLayer`` (``mmdet/models/layers/transformer/mask2former_layers.py``,
``detr_layers.py``), mmcv ``MultiheadAttention`` / ``FFN`` and ``SinePositionalEncoding3D``.

Module attribute names copy the upstream ones, so the released state dict (``omg_seg_convl.pth``
``state_dict`` under ``panoptic_head.``; the GCG fine-tune's
``visual_encoder.panoptic_head.{transformer_decoder_llm,mask_embed_llm}.*``) maps 1:1 onto
``module.state_dict()`` minus the prefix. The pixel decoder lives in ``pixel_decoder.py``; this
head takes its outputs (``mask_features`` at stride 4 and the memories at stride 32, 16, 8).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from altp.models.errors import CheckpointError, listed, raise_problems, warn_unexpected

PREFIX = "panoptic_head."
LLM_PREFIX = "visual_encoder.panoptic_head."
LLM_PARTS = ("transformer_decoder_llm.", "mask_embed_llm.")
# Released keys with no role in GCG inference: the IoU branch (its output is split off in
# ``predict``), the box/point prompt embeddings (``enable_box_query`` is hard-coded True upstream),
# the unused extra cross-attention, and the pixel decoder (loaded by pixel_decoder.py).
UNUSED_PARTS = ("iou_embed.", "mask_tokens.", "pb_embedding.", "pos_linear.", "pixel_decoder.",
                "additional_cross_attn_layers.", "additional_ffn.")
LOGIT_SCALE = 4.6052  # ``logit=None`` in the config -> ln(1/0.01); the logits use its exp()


def _mlp3(channels: int, out_channels: int) -> nn.Sequential:
    """``mask_embed`` / ``cls_proj`` / ``mask_embed_llm``: Linear-ReLU-Linear-ReLU-Linear (keys 0, 2, 4)."""
    return nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels),
                         nn.ReLU(), nn.Linear(channels, out_channels))


def sine_position_3d(batch: int, height: int, width: int, num_feats: int,
                     device=None, temperature: float = 10000.0) -> torch.Tensor:
    """mmdet ``SinePositionalEncoding3D(num_feats, normalize=True)`` on an all-valid (B, T=1, H, W)
    mask, laid out as upstream's ``.transpose(1, 2).flatten(2).permute(0, 2, 1)``: [B, H*W, 2*num_feats].

    Channels are ``cat(pos_y, pos_x) + pos_z``; with one frame the z term is a constant vector
    (z = 2*pi/(1+eps)) that still shifts every position, so it is kept.
    """
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * scale
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * scale
    z = torch.ones(1, dtype=torch.float32, device=device) / (1 + eps) * scale

    def embed(values: torch.Tensor, feats: int) -> torch.Tensor:
        dim_t = torch.arange(feats, dtype=torch.float32, device=device)
        dim_t = temperature ** (2 * (dim_t // 2) / feats)
        pos = values[:, None] / dim_t
        return torch.stack((pos[:, 0::2].sin(), pos[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = embed(y, num_feats)[:, None, :].expand(height, width, num_feats)
    pos_x = embed(x, num_feats)[None, :, :].expand(height, width, num_feats)
    pos = torch.cat((pos_y, pos_x), dim=-1) + embed(z, 2 * num_feats)[0]
    return pos.reshape(1, height * width, 2 * num_feats).expand(batch, -1, -1)


class Attention(nn.Module):
    """mmcv ``MultiheadAttention`` (batch_first): positions are added to query and key, not value;
    the residual is the query without its position; dropouts are 0 at inference."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, num_heads, batch_first=True)

    def forward(self, query, key, value, query_pos, key_pos, attn_mask=None):
        out = self.attn(query + query_pos, key + key_pos, value, attn_mask=attn_mask,
                        need_weights=False)[0]
        return query + out


class FFN(nn.Module):
    """mmcv ``FFN`` with num_fcs=2: ``layers.0.0`` Linear + ReLU, ``layers.1`` Linear, plus identity."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(channels, hidden), nn.ReLU()),
                                    nn.Linear(hidden, channels))

    def forward(self, x):
        return x + self.layers(x)


class DecoderLayer(nn.Module):
    """``Mask2FormerTransformerDecoderLayer``: masked cross-attn -> norms.0 -> self-attn -> norms.1
    -> FFN -> norms.2 (post-LN)."""

    def __init__(self, channels: int, num_heads: int, ffn_channels: int):
        super().__init__()
        self.cross_attn = Attention(channels, num_heads)
        self.self_attn = Attention(channels, num_heads)
        self.ffn = FFN(channels, ffn_channels)
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(3))

    def forward(self, query, memory, memory_pos, query_pos, cross_attn_mask):
        query = self.norms[0](self.cross_attn(query, memory, memory, query_pos, memory_pos,
                                              attn_mask=cross_attn_mask))
        query = self.norms[1](self.self_attn(query, query, query, query_pos, query_pos))
        return self.norms[2](self.ffn(query))


class TransformerDecoder(nn.Module):
    """``Mask2FormerTransformerDecoder``: the layers plus ``post_norm`` (applied by the head)."""

    def __init__(self, num_layers: int, channels: int, num_heads: int, ffn_channels: int):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(channels, num_heads, ffn_channels)
                                    for _ in range(num_layers))
        self.post_norm = nn.LayerNorm(channels)


def cross_attention_mask(mask_pred: torch.Tensor, size, num_heads: int) -> torch.Tensor:
    """[B, Q, h, w] logits -> bool [B*heads, Q, H*W] (True = not attended) at a memory's size,
    with Mask2Former's fallback: a query whose row is all masked attends everywhere instead.
    Upstream applies the fallback at the top of each layer; doing it here is the same."""
    mask = F.interpolate(mask_pred, size=tuple(size), mode="bilinear", align_corners=False)
    mask = mask.flatten(2).unsqueeze(1).repeat(1, num_heads, 1, 1).flatten(0, 1).sigmoid() < 0.5
    mask[mask.all(dim=-1)] = False
    return mask


def mask_pool(features: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """``utils.mask_pool``: mean of ``features`` [B,C,H,W] over each query's ``mask_pred > 0``."""
    if features.shape[-2:] != mask_pred.shape[-2:]:
        mask_pred = F.interpolate(mask_pred, size=features.shape[-2:], mode="bilinear",
                                  align_corners=False)
    mask = (mask_pred > 0).to(features.dtype)
    mask = mask / (mask.sum(dim=(-1, -2), keepdim=True) + 1e-8)
    return torch.einsum("bchw,bqhw->bqc", features, mask)


class OMGMask2FormerHead(nn.Module):
    """The decoder half of ``Mask2FormerVideoSemSamHead`` with ``sphere_cls=True`` (open-vocabulary
    classifier) and, when ``llm_decoder``, the GCG fine-tune's ``transformer_decoder_llm`` /
    ``mask_embed_llm`` copies used only for [SEG] decoding."""

    def __init__(self, feat_channels: int = 256, out_channels: int = 256, num_queries: int = 300,
                 num_layers: int = 9, num_levels: int = 3, num_heads: int = 8,
                 ffn_channels: int = 2048, num_classes: int = 133, cls_embed_dim: int = 768,
                 input_proj: bool = False, llm_decoder: bool = False):
        super().__init__()
        self.feat_channels, self.num_heads, self.num_levels = feat_channels, num_heads, num_levels
        self.transformer_decoder = TransformerDecoder(num_layers, feat_channels, num_heads,
                                                      ffn_channels)
        # Identity when in == embed dims and enforce_decoder_input_project=False (OMG's config)
        self.decoder_input_projs = nn.ModuleList(
            nn.Conv2d(feat_channels, feat_channels, 1) if input_proj else nn.Identity()
            for _ in range(num_levels))
        self.query_embed = nn.Embedding(num_queries, feat_channels)
        self.query_feat = nn.Embedding(num_queries, feat_channels)
        self.level_embed = nn.Embedding(num_levels, feat_channels)
        self.mask_embed = _mlp3(feat_channels, out_channels)
        self.cls_proj = _mlp3(feat_channels, cls_embed_dim)
        self.mask_pooling_proj = nn.Sequential(nn.LayerNorm(feat_channels),
                                               nn.Linear(feat_channels, feat_channels))
        # Non-persistent upstream too: the class text embeddings come from their own .pth.
        self.register_buffer("cls_embed", torch.zeros(cls_embed_dim, num_classes + 1, 1),
                             persistent=False)
        self.register_buffer("logit_scale", torch.tensor(LOGIT_SCALE), persistent=False)
        self.transformer_decoder_llm = self.mask_embed_llm = None
        if llm_decoder:
            self.transformer_decoder_llm = TransformerDecoder(num_layers, feat_channels,
                                                              num_heads, ffn_channels)
            self.mask_embed_llm = _mlp3(feat_channels, out_channels)

    def set_class_embed(self, embed: torch.Tensor) -> None:
        """Install the frozen text embeddings (``convnext_large_d_320_CocoPanopticOVDataset.pth``:
        [classes, prototypes, dim], unit norm, asserted upstream) with a zero background row
        appended LAST, stored as upstream's [dim, classes+1, prototypes]."""
        embed = embed.float()
        if embed.dim() == 2:
            embed = embed[:, None]
        norms = embed.norm(p=2, dim=-1)
        if embed.dim() != 3 or embed.shape[-1] != self.cls_embed.shape[0] or \
                not torch.allclose(norms, torch.ones_like(norms)):
            raise CheckpointError(f"class embeddings {tuple(embed.shape)}: want unit-norm "
                                  f"[classes, prototypes, {self.cls_embed.shape[0]}]")
        embed = torch.cat([embed, embed.new_zeros(1, *embed.shape[1:])], dim=0)
        self.cls_embed = embed.permute(2, 0, 1).contiguous().to(self.cls_embed.device)

    def _levels(self, memorys: Sequence[torch.Tensor]):
        """Per level (low -> high resolution): projected memory + level embedding, its 3-D sine
        position, and its (h, w). Shared by both decoders (upstream has no _llm copy of these)."""
        levels = []
        for i in range(self.num_levels):
            memory = self.decoder_input_projs[i](memorys[i])
            b, c, h, w = memory.shape
            tokens = memory.flatten(2).transpose(1, 2) + self.level_embed.weight[i]
            levels.append((tokens, sine_position_3d(b, h, w, c // 2, memory.device).to(tokens),
                           (h, w)))
        return levels

    def _decode(self, query, query_pos, mask_features, levels, decoder, mask_embed):
        """Initial prediction, then each layer attends to level i % L under the mask predicted
        before it. Returns (last layer output before post_norm, after it, last mask logits)."""

        def head(q, size):
            out = decoder.post_norm(q)
            mask_pred = torch.einsum("bqc,bchw->bqhw", mask_embed(out), mask_features)
            attn = None if size is None else cross_attention_mask(mask_pred, size, self.num_heads)
            return out, mask_pred, attn

        out, mask_pred, attn = head(query, levels[0][2])
        num_layers = len(decoder.layers)
        for i, layer in enumerate(decoder.layers):
            tokens, pos, _ = levels[i % self.num_levels]
            query = layer(query, tokens, pos, query_pos, attn)
            # the mask after the last layer is the output; no attention mask needed from it
            size = levels[(i + 1) % self.num_levels][2] if i + 1 < num_layers else None
            out, mask_pred, attn = head(query, size)
        return query, out, mask_pred

    def classify(self, out: torch.Tensor, mask_features: torch.Tensor,
                 mask_pred: torch.Tensor) -> torch.Tensor:
        """``_forward_head`` + ``forward_logit``: cosine similarity of the mask-pooled query
        embedding with each class's prototypes (max over prototypes) x exp(4.6052) ~= 100.
        The zero background row always scores 0."""
        pooled = self.mask_pooling_proj(mask_pool(mask_features, mask_pred))
        embed = F.normalize(self.cls_proj(pooled + out), dim=-1)
        logits = torch.einsum("bqc,ckp->bqkp", embed, self.cls_embed.to(embed)).max(-1).values
        return self.logit_scale.exp() * logits

    @torch.no_grad()
    def predict(self, mask_features: torch.Tensor, memorys: Sequence[torch.Tensor]):
        """-> (cls_logits [B,Q,C+1], mask_logits [B,Q,H/4,W/4], query_feat [B,Q,C] (last layer,
        before post_norm), query_pos [B,Q,C] (= query_embed.weight)).

        Upstream ``predict`` also resizes the mask logits to the 1024 input; that is left to
        ``perception_prior``, which reads only the pixels the 16x16 resize needs."""
        dtype = self.query_feat.weight.dtype
        mask_features = mask_features.to(dtype)
        levels = self._levels([m.to(dtype) for m in memorys])
        b = mask_features.shape[0]
        query = self.query_feat.weight.unsqueeze(0).repeat(b, 1, 1)
        query_pos = self.query_embed.weight.unsqueeze(0).repeat(b, 1, 1)
        query, out, mask_pred = self._decode(query, query_pos, mask_features, levels,
                                             self.transformer_decoder, self.mask_embed)
        return self.classify(out, mask_features, mask_pred), mask_pred, query, query_pos

    @torch.no_grad()
    def segment_llm(self, queries: torch.Tensor, mask_features: torch.Tensor,
                    memorys: Sequence[torch.Tensor], image_index: torch.Tensor) -> torch.Tensor:
        """``forward_llm_seg``: each projected [SEG] state [N, 2C] is one query (first C = content,
        last C = position) decoded alone against image ``image_index[n]``'s cached features;
        returns the last of the 1 + L mask predictions, [N, H/4, W/4]. Uses the _llm decoder
        and mask MLP (with the _llm decoder's post_norm) when present, else the original."""
        dtype, c = self.query_feat.weight.dtype, self.feat_channels
        if queries.shape[-1] != 2 * c:
            raise ValueError(f"[SEG] queries have {queries.shape[-1]} channels, want {2 * c}")
        image_index = torch.as_tensor(image_index, device=mask_features.device).long()
        levels = [(tokens[image_index], pos[image_index], size)
                  for tokens, pos, size in self._levels([m.to(dtype) for m in memorys])]
        queries = queries.to(dtype).unsqueeze(1)
        llm = self.transformer_decoder_llm is not None
        _, _, mask_pred = self._decode(
            queries[..., :c], queries[..., c:], mask_features.to(dtype)[image_index], levels,
            self.transformer_decoder_llm if llm else self.transformer_decoder,
            self.mask_embed_llm if llm else self.mask_embed)
        return mask_pred[:, 0]


def _resize_matrix(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """[n_out, n_in] weights of 1-D bilinear resizing (align_corners=False, no antialias), taken
    from F.interpolate itself so they are PyTorch's exactly (the other axis is an identity)."""
    eye = torch.eye(n_in, dtype=torch.float64, device=device)[None, None]
    return F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)[0, 0]


@torch.no_grad()
def perception_prior(cls_logits, mask_logits, query_feat, query_pos, image_size=1024, grid=16):
    """``OMGSegVisualEncoder.panoptic_postprocess`` for a batch, without the 1024^2 maps.

    Upstream: prob = (score*0.5+0.5) * sigmoid(resize(mask, image)), resized to the grid, with
    score the best non-background softmax class probability. Both resizes are separable linear
    maps R and the sigmoid is per pixel, so grid = Ry_down @ (w * sigmoid(Ry_up @ M @ Rx_up^T))
    @ Rx_down^T is exact, and Ry_down reads only 2 image rows per grid row (1024->16: rows
    64i+31 and 64i+32): only those rows/columns of the upsampled logits are evaluated.

    Returns pixel_query [B, G*G, 2C] (softmax over queries of prob, row-major cells, times
    [query_feat | query_pos]), attn_mask [B, Q, G*G] (True where query q is not the argmax), and
    valid [B, Q] (queries that win at least one cell: the object tokens).
    """
    image = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    cells = (grid, grid) if isinstance(grid, int) else tuple(grid)
    dtype, device = mask_logits.dtype, mask_logits.device
    score = F.softmax(cls_logits, dim=-1)[..., :-1].max(-1).values
    weight = score * 0.5 + 0.5
    axes = []
    for n_mask, n_image, n_grid in zip(mask_logits.shape[-2:], image, cells):
        up, down = _resize_matrix(n_mask, n_image, device), _resize_matrix(n_image, n_grid, device)
        used = (down != 0).any(dim=0).nonzero().squeeze(1)
        axes.append((up[used].to(dtype), down[:, used].to(dtype)))
    (up_y, down_y), (up_x, down_x) = axes
    logits = up_y @ mask_logits @ up_x.T  # [B, Q, 2Gy, 2Gx] upsampled logits at the sample points
    prob = down_y @ (weight[..., None, None] * logits.sigmoid()) @ down_x.T  # [B, Q, Gy, Gx]
    prob = prob.flatten(2)
    pixel_query = prob.softmax(dim=1).transpose(1, 2) @ torch.cat([query_feat, query_pos], -1)
    winner = prob.argmax(dim=1)  # first index on ties, like torch upstream
    queries = torch.arange(prob.shape[1], device=device)
    attn_mask = winner[:, None, :] != queries[None, :, None]
    valid = attn_mask.sum(-1) < prob.shape[-1]
    return pixel_query, attn_mask, valid


def pixel_shuffle(features: torch.Tensor, ratio: int = 2) -> torch.Tensor:
    """``pixel_shuffle_feat`` + flatten: [B,C,H,W] -> [B, (H/r)(W/r), r*r*C], channels ordered
    (rh, rw, c) -- the trained projector's input order -- and tokens row-major."""
    b, c, h, w = features.shape
    x = features.reshape(b, c, h // ratio, ratio, w // ratio, ratio).permute(0, 3, 5, 1, 2, 4)
    return x.flatten(1, 3).flatten(2).transpose(1, 2)


def released_state_dict(module: OMGMask2FormerHead, prefix: str = PREFIX) -> dict:
    """The module's weights under the released names (the inverse of ``load_released``)."""
    return {prefix + k: v.detach().clone() for k, v in module.state_dict().items()}


def load_released(module: OMGMask2FormerHead, tensors: Mapping[str, torch.Tensor],
                  prefix: str = PREFIX, llm_tensors: Mapping[str, torch.Tensor] | None = None,
                  llm_prefix: str = LLM_PREFIX, source: str = "OMG-Seg head") -> list[str]:
    """Load ``tensors[prefix + name]`` into every parameter; the _llm copies come from
    ``llm_tensors[llm_prefix + name]`` when given (the GCG .pth), else from ``tensors``.

    Keys under ``prefix`` with no inference role (``UNUSED_PARTS``) are skipped and returned;
    missing keys and shape mismatches raise one ``CheckpointError`` line; any other key under
    ``prefix`` (e.g. _llm weights for a head built without them) is ignored with one warning line,
    as upstream's ``strict=False`` loading."""
    wanted = module.state_dict()
    state, missing, mismatched = {}, [], []
    for name, target in wanted.items():
        llm = name.startswith(LLM_PARTS) and llm_tensors is not None
        key = (llm_prefix if llm else prefix) + name
        value = (llm_tensors if llm else tensors).get(key)
        if value is None:
            missing.append(key)
        elif value.shape != target.shape:
            mismatched.append(f"{key} {tuple(value.shape)}!={tuple(target.shape)}")
        else:
            state[name] = value
    ignored, unexpected = [], []
    for key in tensors:
        if key.startswith(prefix) and key[len(prefix):] not in wanted:
            (ignored if key[len(prefix):].startswith(UNUSED_PARTS) else unexpected).append(key)
    raise_problems(source, [("missing", missing), ("shape mismatches", mismatched)])
    warn_unexpected(source, unexpected, "unexpected")
    module.load_state_dict(state, strict=True)
    return ignored


def infer_config(tensors: Mapping[str, torch.Tensor], prefix: str = PREFIX,
                 llm_tensors: Mapping[str, torch.Tensor] | None = None,
                 llm_prefix: str = LLM_PREFIX, num_heads: int = 8,
                 class_embed: torch.Tensor | None = None) -> dict:
    """``OMGMask2FormerHead`` kwargs from tensor shapes. Heads are not visible in any shape
    (in_proj is [3C, C] for any head count): pass ``num_heads`` (8 in OMG-Seg's config)."""
    layer = prefix + "transformer_decoder.layers.0."
    needed = ["query_feat.weight", "level_embed.weight", "mask_embed.4.weight",
              "cls_proj.4.weight", "transformer_decoder.layers.0.ffn.layers.0.0.weight"]
    absent = [prefix + k for k in needed if prefix + k not in tensors]
    if absent:
        raise CheckpointError(f"OMG-Seg head: cannot infer its config, {listed('missing', absent)}")
    pattern = re.compile(re.escape(prefix) + r"transformer_decoder\.layers\.(\d+)\.")
    layers = {int(m.group(1)) for k in tensors if (m := pattern.match(k))}
    num_queries, channels = tensors[prefix + "query_feat.weight"].shape
    llm_source, llm_key = ((llm_tensors, llm_prefix) if llm_tensors is not None
                           else (tensors, prefix))
    return dict(
        feat_channels=channels, num_queries=num_queries, num_layers=max(layers) + 1,
        num_levels=tensors[prefix + "level_embed.weight"].shape[0], num_heads=num_heads,
        out_channels=tensors[prefix + "mask_embed.4.weight"].shape[0],
        ffn_channels=tensors[layer + "ffn.layers.0.0.weight"].shape[0],
        cls_embed_dim=tensors[prefix + "cls_proj.4.weight"].shape[0],
        num_classes=133 if class_embed is None else class_embed.shape[0],
        input_proj=prefix + "decoder_input_projs.0.weight" in tensors,
        llm_decoder=any(k.startswith(llm_key + LLM_PARTS[0]) for k in llm_source))
