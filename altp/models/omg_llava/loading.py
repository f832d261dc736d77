"""Build OMG-LLaVA from the released files (docs/upstream/omg_llava.md §4.1-4.2), in one local folder:

    internlm2-chat-7b/                               base LLM (HF folder, tokenizer.model)
    omg_seg_convl.pth                                OMG-Seg: backbone.*, panoptic_head.* (mmengine: state_dict)
    convnext_large_d_320_CocoPanopticOVDataset.pth   open-vocabulary class text embeddings
    finetuned_gcg.pth                                llm.* LoRA + resized embeddings, projector.*,
                                                     projector_text2vision.*, the GCG [SEG] decoder

Every dimension comes from tensor shapes (tiny checkpoints in this layout load through the same
code); what shapes cannot tell (attention heads, deformable points) is upstream's. A missing or
mismatched key is one ``CheckpointError`` line that names the file; unexpected keys are ignored
with one warning line each part (upstream loads with ``strict=False``), recorded in metrics.json
(``model_deviations.load_warnings``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from altp.models.base import resolve_dtype
from altp.models.errors import CheckpointError, collect_warnings, raise_problems, warn_unexpected
from altp.models.omg_llava import convnext, mask2former, pixel_decoder
from altp.models.omg_llava.internlm2 import load_internlm2_llama, read_state
from altp.models.omg_llava.model import ObjectPixelProjector, OMGLLaVA, text_to_vision
from altp.models.omg_llava.perception import OMGSeg
from altp.models.omg_llava.prompt import (
    GCG_QUESTIONS,
    add_special_tokens,
    build_prompt_ids,
    load_tokenizer,
    stop_ids,
)

log = logging.getLogger(__name__)
PROJECTOR = "projector.model."
TEXT2VISION = "projector_text2vision.model."
HEADS = 8  # attention heads of the pixel decoder and the Mask2Former decoder (not in any shape)


def check_files(llm_dir: str, seg_weights: str, class_embeddings: str, checkpoint: str) -> str | None:
    """The runner's preflight: one line naming every missing file, or None."""
    wanted = [Path(seg_weights), Path(class_embeddings), Path(checkpoint), Path(llm_dir) / "config.json",
              Path(llm_dir) / "tokenizer.model"]
    missing = [str(path) for path in wanted if not path.is_file()]
    if missing:
        return (f"OMG-LLaVA files missing: {', '.join(missing)}; download them from the HF repo "
                "zhangtao-whu/OMG-LLaVA (README, OMG-LLaVA section)")
    return None


def resolve_base_weights(base_weights: str) -> bool:
    """Whether to round the LLM's base weights through NF4 first, as upstream's 4-bit base:
    ``auto`` = when bitsandbytes is installed (parity), else the plain weights; recorded in
    metrics.json (``model_deviations.llm_base_weights``)."""
    available = importlib.util.find_spec("bitsandbytes") is not None
    if base_weights == "auto":
        return available
    if base_weights not in ("plain", "nf4"):
        raise ValueError(f"model.base_weights={base_weights}: choose auto, plain or nf4")
    if base_weights == "nf4" and not available:
        raise ValueError("model.base_weights=nf4 needs bitsandbytes: pip install -e '.[nf4]' (or base_weights=plain)")
    return base_weights == "nf4"


def read_class_embeddings(path: Path) -> torch.Tensor:
    """[classes, prototypes, dim] (or [classes, dim]) text embeddings, as upstream torch.loads them."""
    if not path.is_file():
        raise CheckpointError(f"class embeddings {path} are missing")
    embed = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(embed, torch.Tensor) or embed.dim() not in (2, 3):
        raise CheckpointError(f"class embeddings {path}: expected a [classes, (prototypes,) dim] tensor")
    return embed


def build_perception(seg: dict, gcg: dict, embed: torch.Tensor, backbone_file: str | None,
                     seg_path: Path, image_size: int, gcg_path: Path | None = None) -> OMGSeg:
    """OMG-Seg from omg_seg_convl.pth (+ the GCG fine-tune's [SEG] decoder copies), fp32."""
    if any(k.startswith(convnext.OMG_SEG_PREFIX) for k in seg):
        backbone = convnext.build_released(seg, convnext.OMG_SEG_PREFIX, str(seg_path))
    elif backbone_file:  # unverified whether the OMG-Seg file holds the trunk (docs/upstream/omg_llava.md §8)
        laion = read_state(Path(backbone_file), "ConvNeXt backbone")
        backbone = convnext.build_released(laion, convnext.OPEN_CLIP_PREFIX, backbone_file)
    else:
        raise CheckpointError(f"{seg_path} has no backbone.* weights: pass model.backbone=<open_clip "
                              "checkpoint of laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup>")
    decoder = pixel_decoder.MSDeformAttnPixelDecoder(**pixel_decoder.infer_pixel_decoder_config(seg))
    pixel_decoder.load_released(decoder, seg, source=str(seg_path))
    config = mask2former.infer_config(seg, llm_tensors=gcg, num_heads=HEADS, class_embed=embed)
    head = mask2former.OMGMask2FormerHead(**config)
    head.set_class_embed(embed)
    source = str(seg_path)  # the _llm copies come from the GCG .pth: name it too
    if config["llm_decoder"] and gcg_path is not None:
        source += f" + {gcg_path} ({mask2former.LLM_PREFIX}*_llm)"
    ignored = mask2former.load_released(head, seg, llm_tensors=gcg if config["llm_decoder"] else None,
                                        source=source)
    if ignored:
        log.info("OMG-Seg: %d tensors without an inference role skipped (iou_embed, prompt embeddings)", len(ignored))
    if not config["llm_decoder"]:
        log.warning("no transformer_decoder_llm in the checkpoint: [SEG] is decoded by the original "
                    "OMG-Seg decoder (right for omg_llava_7b_finetune_8gpus.pth, not for finetuned_gcg.pth)")
    return OMGSeg(backbone, decoder, head, image_size).float().eval()


def build_projectors(gcg: dict, path: Path) -> tuple[ObjectPixelProjector, torch.nn.Module]:
    names = ["query_proj.weight", "model.0.weight", "model_feat.0.weight", "seperate_embed.weight"]
    needed = [PROJECTOR + n for n in names] + [TEXT2VISION + "0.weight"]  # the shapes that size them
    raise_problems(f"OMG-LLaVA checkpoint {path}", [("missing", [k for k in needed if k not in gcg])])
    feat, query = gcg[PROJECTOR + "query_proj.weight"].shape
    hidden, pixel = gcg[PROJECTOR + "model_feat.0.weight"].shape
    projector = ObjectPixelProjector(pixel, query, hidden, feat)
    out, width = gcg[TEXT2VISION + "0.weight"].shape
    text2vision = text_to_vision(width, out)
    for module, prefix in ((projector, PROJECTOR), (text2vision, TEXT2VISION)):
        own = module.state_dict()
        state = {k: gcg[prefix + k] for k in own if prefix + k in gcg}
        raise_problems(f"OMG-LLaVA checkpoint {path}", [
            ("missing", [prefix + k for k in own if k not in state]),
            ("shape mismatches", [prefix + k for k, v in state.items() if v.shape != own[k].shape])])
        warn_unexpected(f"OMG-LLaVA checkpoint {path}",
                        [k for k in gcg if k.startswith(prefix) and k[len(prefix):] not in own], "unexpected")
        module.load_state_dict(state)
    return projector.float().eval(), text2vision.float().eval()


def load_omg_llava(llm_dir: str, seg_weights: str, class_embeddings: str, checkpoint: str,
                   backbone: str | None = None, dtype: str = "auto", device: str = "auto",
                   base_weights: str = "auto", retry_questions: bool = False,
                   image_size: int = 1024) -> OMGLLaVA:
    """OMG-LLaVA GCG from its released files (module docstring); LLM in ``dtype``, the rest fp32."""
    nf4 = resolve_base_weights(base_weights)
    if image_size % 64:
        raise ValueError(f"model.image_size={image_size}: must be a multiple of 64 (stride 32, shuffle 2)")
    seg_path, gcg_path = Path(seg_weights), Path(checkpoint)
    seg, gcg = read_state(seg_path, "OMG-Seg weights"), read_state(gcg_path, "OMG-LLaVA checkpoint")
    embed = read_class_embeddings(Path(class_embeddings))
    with collect_warnings() as notes:
        perception = build_perception(seg, gcg, embed, backbone, seg_path, image_size, gcg_path)
        projector, text2vision = build_projectors(gcg, gcg_path)
        llm, info = load_internlm2_llama(llm_dir, gcg_path, resolve_dtype(dtype, device), nf4=nf4, state=gcg)
    tokenizer = load_tokenizer(llm_dir)
    ids = add_special_tokens(tokenizer)
    if ids["embedding_rows"] != llm.config.vocab_size:  # <mark>, added after the resize, has no row
        raise CheckpointError(f"{llm_dir}: the tokenizer has {ids['embedding_rows']} tokens with [SEG], <p>, "
                              f"</p>, <region> but {gcg_path} embeds {llm.config.vocab_size}")
    questions = [build_prompt_ids(tokenizer, q) for q in GCG_QUESTIONS]
    return OMGLLaVA(perception, projector, text2vision, llm, tokenizer, questions, ids["[SEG]"],
                    sorted(stop_ids(tokenizer)), retry_questions,
                    details={**info, "load_warnings": notes}).eval()
