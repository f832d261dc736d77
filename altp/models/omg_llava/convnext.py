"""ConvNeXt trunk of OMG-Seg's frozen CLIP backbone, in plain PyTorch (no timm / open_clip).

OMG-Seg's ``OpenCLIPBackbone_omgseg`` (``omg_llava/model/convnext_clip/openclip_backbone.py`` in
lxtGH/OMG-Seg) builds open_clip's ``convnext_large_d_320``, whose image tower is a timm
``convnext_large`` trunk, and keeps only its pieces: ``self.stem = visual.trunk.stem``,
``self.layer{i+1} = visual.trunk.stages[i]``, plus ``norm_pre`` and ``head`` (unused on the
LLaVA path). ``forward_func`` runs the stem and the four stages and returns the **raw** stage
outputs (strides 4/8/16/32); ``norm_pre`` is only used for open-vocabulary mask pooling.

The modules below follow timm ``timm/models/convnext.py`` (``ConvNeXt``, ``ConvNeXtStage``,
``ConvNeXtBlock``) for the configuration open_clip uses (patch stem, ``conv_mlp=False``,
``conv_bias=True``, layer scale ``gamma``, LayerNorm eps 1e-6, exact GELU, no dilation), and keep
timm's parameter names (``stem.{0,1}``, ``stages.{i}.downsample.{0,1}``,
``stages.{i}.blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}``) so a timm state dict loads as is.

Released key layouts (``load_released`` accepts both; ``released_state_dict`` writes either):

* ``omg_seg_convl.pth`` (mmengine ``state_dict`` of ``OMGSegVisualEncoder``): ``backbone.stem.*``
  and ``backbone.layer{1..4}.*`` -- module names verified in ``openclip_backbone.py`` (both the
  ``omg_llava`` copy and ``seg/models/backbones``); whether the released file actually holds the
  frozen backbone is **unverified** (docs/upstream/omg_llava.md §1.1, §8);
* the LAION open_clip checkpoint (``laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup``):
  ``visual.trunk.stem.*`` / ``visual.trunk.stages.{i}.*`` (open_clip ``TimmModel.trunk``).

Keys under the prefix that are not trunk weights (``norm_pre``, ``head``) are ignored, as upstream.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from altp.models.errors import CheckpointError, raise_problems, warn_unexpected

OMG_SEG_PREFIX = "backbone."  # OpenCLIPBackbone_omgseg inside OMGSegVisualEncoder
OPEN_CLIP_PREFIX = "visual.trunk."  # open_clip CLIP.visual (TimmModel).trunk
LARGE_DIMS = (192, 384, 768, 1536)  # convnext_large
LARGE_DEPTHS = (3, 3, 27, 3)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm ``layers/norm.py::LayerNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """timm ``layers/mlp.py::Mlp`` without dropout: fc1 -> GELU (exact) -> fc2, channels last."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """timm ``ConvNeXtBlock``: dw 7x7 conv -> LN (channels last) -> MLP -> layer scale -> + x."""

    def __init__(self, dim: int, mlp_ratio: int = 4, eps: float = 1e-6):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_ratio * dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))  # ls_init_value; overwritten by weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.mlp(self.norm(y)).permute(0, 3, 1, 2)
        return x + y * self.gamma.reshape(1, -1, 1, 1)


class ConvNeXtStage(nn.Module):
    """timm ``ConvNeXtStage``: optional LN2d + 2x2/s2 conv downsample, then ``depth`` blocks.

    Stage 0 follows the stride-4 stem with the same width, so timm gives it ``nn.Identity()``
    (no ``downsample`` parameters); every later stage halves the resolution."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, eps: float = 1e-6):
        super().__init__()
        if downsample:
            self.downsample = nn.Sequential(
                LayerNorm2d(in_dim, eps=eps), nn.Conv2d(in_dim, dim, kernel_size=2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim, eps=eps) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(nn.Module):
    """The trunk: patch stem (4x4/s4 conv + LN2d) and four stages; returns all four stage maps.

    ``forward(pixels [B, 3, H, W])`` -> ``[x4, x8, x16, x32]`` with ``dims`` channels at strides
    4/8/16/32, exactly ``OpenCLIPBackbone_omgseg.forward_func`` (no ``norm_pre``, no head)."""

    def __init__(self, dims=LARGE_DIMS, depths=LARGE_DEPTHS, in_chans: int = 3,
                 patch_size: int = 4, eps: float = 1e-6):
        super().__init__()
        if len(dims) != 4 or len(depths) != 4:
            raise ValueError(f"ConvNeXt needs 4 dims and 4 depths, got {dims} / {depths}")
        self.dims, self.depths = tuple(dims), tuple(depths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=patch_size, stride=patch_size),
            LayerNorm2d(dims[0], eps=eps))
        self.stages = nn.Sequential(*[
            ConvNeXtStage(dims[max(i - 1, 0)], dims[i], depths[i], downsample=i > 0, eps=eps)
            for i in range(4)])

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(pixels)
        outs = []
        for stage in self.stages:
            x = stage(x).contiguous()
            outs.append(x)
        return outs


# ----------------------------------------------------------------------------- key mapping

_LAYER = re.compile(r"^layer(\d+)\.")
_STAGE = re.compile(r"^stages\.(\d+)\.")


def _trunk_tensors(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The trunk weights under ``prefix`` in timm names (``layer{n}.`` -> ``stages.{n-1}.``)."""
    out = {}
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        name = _LAYER.sub(lambda m: f"stages.{int(m.group(1)) - 1}.", key[len(prefix):])
        if name.startswith(("stem.", "stages.")):  # norm_pre / head are not part of the trunk
            out[name] = value
    return out


def infer_convnext_config(tensors: dict[str, torch.Tensor], prefix: str = "") -> dict:
    """``{"dims", "depths", "in_chans", "patch_size"}`` read from the tensors' shapes under
    ``prefix`` (timm ``stages.{i}`` or OMG-Seg ``layer{i+1}`` naming); ConvNeXt(**config)."""
    trunk = _trunk_tensors(tensors, prefix)
    stem = trunk.get("stem.0.weight")
    if stem is None:
        raise CheckpointError(f"ConvNeXt weights under {prefix!r}: no stem.0.weight")
    dims, depths = [], []
    for i in range(4):
        blocks = {int(m.group(1)) for k in trunk
                  if (m := re.match(rf"stages\.{i}\.blocks\.(\d+)\.conv_dw\.weight$", k))}
        if not blocks:
            raise CheckpointError(f"ConvNeXt weights under {prefix!r}: stage {i} has no blocks")
        dims.append(trunk[f"stages.{i}.blocks.0.conv_dw.weight"].shape[0])
        depths.append(max(blocks) + 1)
    return {"dims": tuple(dims), "depths": tuple(depths), "in_chans": stem.shape[1],
            "patch_size": stem.shape[-1]}


def load_exact(module: nn.Module, named: dict[str, torch.Tensor], names: dict[str, str],
               where: str) -> None:
    """Copy ``named[names[k]]`` into each entry ``k`` of ``module.state_dict()``; every missing
    key and shape mismatch becomes one ``CheckpointError`` line, unused entries of ``named`` one
    warning line (upstream loads with ``strict=False``).

    ``names`` maps module keys to released keys (used in the message); ``where`` says which
    file / prefix is being read. Shared by ``convnext`` and ``pixel_decoder``."""
    own = module.state_dict()
    missing = [names[k] for k in own if k not in named]
    mismatched = [f"{names[k]} {list(named[k].shape)} vs {list(v.shape)}"
                  for k, v in own.items() if k in named and named[k].shape != v.shape]
    unexpected = [names.get(k, k) for k in named if k not in own]
    raise_problems(where, [("missing", missing), ("shape mismatches (checkpoint vs model)", mismatched)])
    warn_unexpected(where, unexpected, "unexpected")
    with torch.no_grad():
        for key, value in own.items():
            value.copy_(named[key])


def _released_name(key: str, prefix: str, stage_names: str) -> str:
    if stage_names == "layer":
        key = _STAGE.sub(lambda m: f"layer{int(m.group(1)) + 1}.", key)
    return prefix + key


def load_released(module: ConvNeXt, tensors: dict[str, torch.Tensor],
                  prefix: str = OMG_SEG_PREFIX, source: str = "checkpoint") -> None:
    """Load the trunk from released tensors: ``backbone.`` + ``stem``/``layer{n}`` (OMG-Seg) or
    ``visual.trunk.`` + ``stem``/``stages.{i}`` (open_clip); ``source`` names the file."""
    named = _trunk_tensors(tensors, prefix)
    stage_names = "layer" if any(k.startswith(prefix + "layer") for k in tensors) else "stages"
    names = {k: _released_name(k, prefix, stage_names) for k in module.state_dict()}
    for k in named:
        names.setdefault(k, _released_name(k, prefix, stage_names))
    load_exact(module, named, names, f"{source} ({prefix}*)")


def released_state_dict(module: ConvNeXt, prefix: str = OMG_SEG_PREFIX,
                        stage_names: str | None = None) -> dict[str, torch.Tensor]:
    """The inverse of ``load_released``: ``module``'s weights under released names. Stages are
    named ``layer{i+1}`` (OMG-Seg) unless ``prefix`` is open_clip's or ``stage_names="stages"``."""
    if stage_names is None:
        stage_names = "stages" if prefix == OPEN_CLIP_PREFIX else "layer"
    return {_released_name(k, prefix, stage_names): v.detach().clone()
            for k, v in module.state_dict().items()}


def build_released(tensors: dict[str, torch.Tensor], prefix: str = OMG_SEG_PREFIX,
                   source: str = "checkpoint") -> ConvNeXt:
    """A ``ConvNeXt`` sized from the tensors under ``prefix`` and loaded from them."""
    model = ConvNeXt(**infer_convnext_config(tensors, prefix))
    load_released(model, tensors, prefix, source)
    return model.eval()
