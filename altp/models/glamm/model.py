"""GLaMM-GCG inference (``eval/gcg/infer.py`` + ``GLaMMForCausalLM.evaluate``) through our engine.

Per batch of images (groundingLMM@e74865f ``eval/gcg/infer.py::inference``, ``model/GLaMM.py::evaluate``):

1. CLIP: shortest edge -> 336, centre crop 336 (PIL bicubic, CLIP mean/std), hidden_states[-2]
   without CLS -> 576 x 1024 -> ``mm_projector``; spliced into the prompt at the ``-200`` slot;
2. the engine runs a pruned prefill and KV-cached greedy decoding (EOS 2); ``hidden[b, t]`` is the
   final-norm state of the step that *produced* token t, i.e. GLaMM's one-position-shifted [SEG]
   gather (``seg_mask = sequences[:, 1:] == seg``, issue #16);
3. SAM ViT-H on the 1024 longest-side, zero-padded image (only for images with a [SEG]);
   ``text_hidden_fcs`` turns each [SEG] state into a prompt; masks are post-processed in fp32 and
   thresholded at logit 0;
4. the answer is decoded with special tokens kept and cleaned with GLaMM's regexes
   (``altp.models.cleanup``).

Deviations from the reference procedure (``deviations``, for metrics.json): a KV cache and SDPA
instead of recomputing the whole sequence per token with eager attention (same maths, bf16
rounding differs); batches (every sample has the same prompt, so none needs padding); CLIP and
SAM run once per image; the answer alone is decoded (the prompt it would be split from never
reaches the cleaned text) and by transformers 5, which puts no spaces around added tokens where
4.28's slow tokenizer did: after the clean-up's whitespace collapse this can only change a space
before punctuation that follows ``</p>`` or ``[SEG]``, which METEOR/CIDEr's tokenizer drops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.utils import logging as hf_logging

from altp.engine import EngineInputs, GenerationOutput, PruningEngine
from altp.models.base import GCGModel, GCGPrediction, decode_answer, resolve_dtype
from altp.models.errors import CheckpointError, collect_warnings, raise_problems, warn_unexpected
from altp.models.glamm import sam as sam_ops
from altp.models.glamm.loading import load_parts
from altp.models.glamm.prompt import IMAGE_TOKEN_INDEX, build_prompt_ids

EOS_ID = 2
FP32_WEIGHTS = ("bf16_rounded", "full")  # load_glamm's fp32_weights
CLIP_TEXT_PARTS = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")  # CLIPModel's rest


class GLaMM(GCGModel):
    """CLIP + projector + Llama + text_hidden_fcs + SAM, driven by ``PruningEngine``."""

    name = "glamm"

    def __init__(self, llm, clip, projector, text_hidden_fcs, sam, clip_processor, ids: list[int],
                 tokenizer=None, seg_token_id: int = 32004, select_layer: int = -2,
                 prompt_mode: str = "reference", details: dict | None = None):
        super().__init__()
        self.llm, self.clip, self.projector = llm, clip, projector
        self.text_hidden_fcs, self.sam = text_hidden_fcs, sam
        self.clip_processor, self.tokenizer = clip_processor, tokenizer
        self.ids, self.seg_token_id, self.select_layer = ids, seg_token_id, select_layer
        self.image_start = ids.index(IMAGE_TOKEN_INDEX)
        side = clip.config.image_size // clip.config.patch_size
        self.grid = (side, side)
        self.sam_size = sam.config.vision_config.image_size
        self.prompt_mode = prompt_mode
        self.details = details or {}  # from loading: fp32_weights, load_warnings

    @property
    def deviations(self) -> dict:
        """How this differs from GLaMM's own inference (module docstring), for metrics.json."""
        source = ("transformers 4.28 ids (altp/models/glamm/prompt.py)" if self.prompt_mode == "reference"
                  else f"tokenized by transformers {transformers.__version__}")
        return {"kv_cache": True, "attention": "sdpa", "batched": True,
                "prompt_ids": f"{self.prompt_mode}: {source}",
                "prefill_tokens": len(self.ids) - 1 + self.n_visual, **self.details}

    # --- inputs --------------------------------------------------------------------------
    def clip_inputs(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[np.ndarray]]:
        """uint8 RGB images -> (normalised CLIP pixels [B, 3, S, S], the S x S crops in [0, 1]).

        The crops are what CLIP saw (resize + centre crop, not pad): ALTP's superpixels are
        computed on them, so regions line up with the token grid.
        """
        proc = self.clip_processor
        crops = proc(images=images, do_normalize=False, return_tensors="pt")["pixel_values"]
        mean, std = (torch.tensor(v, dtype=crops.dtype)[:, None, None]
                     for v in (proc.image_mean, proc.image_std))
        return (crops - mean) / std, list(crops.permute(0, 2, 3, 1).numpy())

    def visual_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP hidden_states[select_layer] without CLS -> projector: [B, grid^2, d]."""
        pixels = pixels.to(self.llm.device, self.clip.dtype)
        states = self.clip(pixel_values=pixels, output_hidden_states=True).hidden_states
        return self.projector(states[self.select_layer][:, 1:].to(self.llm.dtype))

    def encoder_view(self, image: Image.Image) -> np.ndarray:
        """What CLIP sees of one image (its crop in [0, 1]): ``EngineInputs.images``, for the
        data pipeline's ``Pruner.prepare``. The processor treats every image of a batch alone,
        so this equals that image's crop in a batch."""
        return self.clip_inputs([np.asarray(image.convert("RGB"))])[1][0]

    def engine_inputs(self, images: list[np.ndarray], prepared: list | None = None) -> EngineInputs:
        """The prompt's text embeddings with the projected CLIP tokens at the ``-200`` slot;
        ``prepared``: the pruner's per-image prepare() states (altp.pipeline), or None."""
        pixels, crops = self.clip_inputs(images)
        visual = self.visual_tokens(pixels)
        text = [i for i in self.ids if i != IMAGE_TOKEN_INDEX]
        text = self.llm.model.embed_tokens(torch.tensor(text, device=visual.device))
        text = text.expand(len(images), -1, -1)
        start = self.image_start
        embeds = torch.cat([text[:, :start], visual, text[:, start:]], dim=1)
        batch, length = embeds.shape[:2]
        device = embeds.device
        return EngineInputs(
            inputs_embeds=embeds, attention_mask=torch.ones(batch, length, dtype=torch.long, device=device),
            visual_start=torch.full((batch,), start, device=device), n_visual=self.n_visual,
            grid=self.grid, images=crops, prepared=prepared)

    # --- masks ---------------------------------------------------------------------------
    def mask_logits(self, image: np.ndarray, seg_hidden: torch.Tensor) -> torch.Tensor:
        """[SEG] states [N, d] on one uint8 image -> fp32 mask logits [N, H, W] at its size."""
        pixels, resized = sam_ops.sam_pixels(image, self.sam_size)
        embedding = self.sam.get_image_embeddings(pixels[None].to(self.llm.device, self.sam.dtype))
        prompts = self.text_hidden_fcs[0](seg_hidden.to(self.llm.dtype))
        low_res = sam_ops.segment(self.sam, embedding, prompts)
        return sam_ops.postprocess_masks(low_res, self.sam_size, resized, image.shape[:2])

    @torch.no_grad()
    def predict(self, images: list[Image.Image], engine: PruningEngine, max_new_tokens: int,
                prepared: list | None = None) -> tuple[list[GCGPrediction], GenerationOutput]:
        """Caption, phrases and one mask per generated [SEG] (original size) for each image;
        ``prepared``: the pruner's prepare() state per image (on ``encoder_view``), or None."""
        arrays = [np.asarray(image.convert("RGB")) for image in images]
        out = engine.generate(self.engine_inputs(arrays, prepared), max_new_tokens, eos_token_id=EOS_ID)
        predictions = []
        for b, array in enumerate(arrays):
            # GLaMM decodes the EOS too; the clean-up's tag regex removes "</s>"
            answer = decode_answer(out, b, self.detokenize, EOS_ID, self.seg_token_id)
            steps = answer.seg_steps
            masks = self.mask_logits(array, out.hidden[b, steps]) > 0 if steps else torch.zeros(0)
            predictions.append(GCGPrediction(answer.caption, answer.phrases, list(masks.cpu().numpy())))
        return predictions, out

    def detokenize(self, ids: list[int]) -> str:
        """infer.py's ``tokenizer.decode(output_ids, skip_special_tokens=False)``."""
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def load_tokenizer(folder: Path):
    """The released tokenizer files with the installed transformers, ``legacy=False``.

    The release's tokenizer_config.json was written by transformers 4.28 and has no ``legacy``
    field, for which transformers 5 picks ``legacy=True``: a '▁' is then prepended to every chunk
    after an added token (``<im_end> provides`` -> '▁▁provides' instead of 4.28's '▁provides',
    ``tokenization_llama.py`` there strips the space next to an added token). With
    ``legacy=False`` only the lone '▁' before ``<im_start>`` differs from 4.28 (``prompt.py``).
    Only ``prompt_ids=tokenizer`` and the decoding of answers depend on it.
    """
    try:
        return AutoTokenizer.from_pretrained(folder, legacy=False)
    except (OSError, ValueError, ImportError) as err:  # e.g. tokenizer.model without sentencepiece
        raise CheckpointError(f"GLaMM tokenizer in {folder}: {str(err).splitlines()[0]} "
                              "(tokenizer.model needs: pip install sentencepiece protobuf)") from None


def load_clip(folder: Path, dtype: torch.dtype) -> CLIPVisionModel:
    """CLIP's vision tower from a local ``openai/clip-vit-large-patch14-336`` (a whole CLIPModel):
    its text tower and projections are expected extras; any other unexpected key warns, a missing
    or mismatched one stops (transformers would leave it randomly initialised)."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the text tower; ours below lists the rest
    try:
        clip, info = CLIPVisionModel.from_pretrained(folder, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"CLIP folder {folder}: {str(err).strip().splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    def in_file(key: str) -> str:  # transformers 5 reports vision keys without their "vision_model."
        return key if key.startswith(("vision_model.", *CLIP_TEXT_PARTS)) else "vision_model." + key

    raise_problems(f"CLIP folder {folder}", [("missing keys", sorted(map(in_file, info["missing_keys"]))),
                                             ("shape mismatches", sorted(map(str, info["mismatched_keys"])))])
    warn_unexpected(f"CLIP folder {folder}", sorted(in_file(k) for k in info["unexpected_keys"]
                                                    if not k.startswith(CLIP_TEXT_PARTS)))
    return clip.eval()


def load_glamm(checkpoint: str, clip: str, dtype: str = "auto", device: str = "auto",
               prompt_ids: str = "reference", fp32_weights: str = "bf16_rounded") -> GLaMM:
    """GLaMM-GCG from its released folder and a local ``openai/clip-vit-large-patch14-336``.

    ``prompt_ids``: ``reference`` | ``tokenizer`` (``prompt.py``). ``fp32_weights`` (float32 only):
    ``bf16_rounded`` = upstream's fp32 recipe, CLIP, SAM and ``text_hidden_fcs`` on weights rounded
    through bf16 (``eval/gcg/infer.py:120-122`` loads with ``torch_dtype=torch.bfloat16``, ``:132``
    casts the vision tower to bf16, ``:135`` says ``model.float()`` for fp32); ``full`` = the
    weights as stored. Every problem with the folders is one ``CheckpointError`` line; unexpected
    keys warn and are recorded (``deviations["load_warnings"]``).
    """
    if fp32_weights not in FP32_WEIGHTS:
        raise ValueError(f"model.fp32_weights={fp32_weights}: choose {' or '.join(FP32_WEIGHTS)}")
    folder, clip_folder = Path(checkpoint), Path(clip)
    for what, path in (("GLaMM checkpoint", folder), ("CLIP", clip_folder)):
        if not path.is_dir():
            raise CheckpointError(f"{what} folder {path} not found")
    torch_dtype = resolve_dtype(dtype, device)
    rounded = torch_dtype == torch.float32 and fp32_weights == "bf16_rounded"
    try:
        clip_config = CLIPVisionConfig.from_pretrained(clip_folder)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"CLIP folder {clip_folder}: {str(err).splitlines()[0]}") from None
    with collect_warnings() as notes:
        parts, config = load_parts(folder, clip_config.hidden_size, torch_dtype, round_bf16=rounded)
        tokenizer = load_tokenizer(folder)
        seg = tokenizer.convert_tokens_to_ids("[SEG]")  # not tokenizer("[SEG]")[0]: docs/upstream/glamm.md §1.5
        if seg is None or seg == tokenizer.unk_token_id:
            raise CheckpointError(f"GLaMM tokenizer in {folder} has no [SEG] token")
        clip_model = load_clip(clip_folder, torch.bfloat16 if rounded else torch_dtype)
    if rounded:
        clip_model.float()  # infer.py:132 vision_tower.to(bf16), then :135 model.float()
    precision = ("n/a (bfloat16 weights)" if torch_dtype != torch.float32 else
                 "bf16_rounded: CLIP, SAM, text_hidden_fcs weights rounded through bf16 (infer.py:120-135)"
                 if rounded else "full: fp32 weights as stored (upstream rounds them through bf16)")
    ids = build_prompt_ids(tokenizer, prompt_ids)
    return GLaMM(parts["llm"], clip_model, parts["projector"], parts["text_hidden_fcs"], parts["sam"],
                 CLIPImageProcessorPil.from_pretrained(clip_folder), ids, tokenizer, seg,
                 config.get("mm_vision_select_layer", -2), prompt_ids,
                 details={"fp32_weights": precision, "load_warnings": notes}).eval()
