"""OMG-LLaVA GCG inference (``omg_llava/tools/gcg_omg_seg_llava.py``) through our engine.

Per batch of images (docs/upstream/omg_llava.md §1-3):

1. pad to a square with the CLIP mean colour (centred), bicubic resize to 1024, CLIP
   mean/std (§3.2);
2. the frozen OMG-Seg perception module (``perception.py``): ConvNeXt-L stages -> pixel decoder
   -> 300-query Mask2Former decoder -> the perception prior; pixel tokens are the pixel-shuffled
   stride-32 map ‖ the prior (256 x 6656), object features the K valid queries (§1.2);
3. ``ObjectPixelProjector`` (upstream ``Naive_Proj``): 256 pixel tokens, the learned separator,
   K object tokens (§1.3), spliced into the InternLM2 chat prompt at ``<image>`` (§3.3);
4. the engine prunes **the 256 pixel tokens only** (a 16 x 16 grid); the separator and the K
   object tokens follow them and are kept like text, so ``keep`` counts pixel tokens
   (keep 0.1 -> 25, 0.25 -> 64 as the ALTP paper's Table 2); greedy decoding stops at ``</s>``
   or ``<|im_end|>`` (§3.4);
5. each [SEG] is decoded from the hidden state of the position whose *input* is [SEG] (§3.5,
   unlike GLaMM): ``hidden[t + 1]`` in the engine's produced-token indexing; a [SEG] emitted
   last is dropped, as upstream; ``projector_text2vision`` -> one query through the (GCG
   fine-tuned) decoder on the cached pixel-decoder features -> 256² logits -> resize to the
   padded square, crop, ``sigmoid > 0.5`` (§3.6).

Samples in a batch differ in K, so they are left-padded to one length (upstream runs batch 1).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from altp.engine import EngineInputs, GenerationOutput, PruningEngine
from altp.models.base import Answer, GCGModel, GCGPrediction, decode_answer
from altp.models.omg_llava.prompt import IMAGE_TOKEN_INDEX, decode

# the OMG-LLaVA configs' CLIPImageProcessor values (4 decimals, not the usual CLIP 8-decimal ones)
CLIP_MEAN = (0.4814, 0.4578, 0.4082)
CLIP_STD = (0.2686, 0.2613, 0.2757)
PAD_COLOUR = tuple(int(m * 255) for m in CLIP_MEAN)  # (122, 116, 104), as expand2square gets it
SUPERPIXEL_SIZE = 336  # the square ALTP segments: as GLaMM's 336 px crops (21 px per token cell), same SLIC cost


def superpixel_image(square: Image.Image) -> np.ndarray:
    """The padded square at SUPERPIXEL_SIZE, float in [0, 1]: what ALTP segments."""
    return np.asarray(square.resize((SUPERPIXEL_SIZE,) * 2, Image.BICUBIC), np.float32) / 255


def expand_to_square(image: Image.Image) -> Image.Image:
    """Upstream ``expand2square``: centred on a mean-colour square ((max - min) // 2 offset)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), PAD_COLOUR)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


class ObjectPixelProjector(nn.Module):
    """Upstream ``Naive_Proj`` (modeling_projector.py): pixel tokens through ``model_feat``,
    valid object queries through ``query_proj`` + ``model``, and a learned separator between."""

    def __init__(self, pixel_dim: int, query_dim: int, hidden: int, feat_dim: int):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, feat_dim)
        self.model = nn.Sequential(nn.Linear(feat_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.model_feat = nn.Sequential(nn.Linear(pixel_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.seperate_embed = nn.Embedding(1, hidden)  # upstream spelling: checkpoint key

    def forward(self, pixel_tokens: torch.Tensor, objects: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """[B, P, pixel_dim], [B, Q, query_dim], [B, Q] -> pixel tokens [B, P, d] and, per image,
        the separator + its valid object tokens [1 + K_b, d] (query order, as upstream)."""
        pixels = self.model_feat(pixel_tokens)
        queries = self.model(self.query_proj(objects))
        return pixels, [torch.cat([self.seperate_embed.weight, q[keep]]) for q, keep in zip(queries, valid)]


def text_to_vision(hidden: int, out_dim: int) -> nn.Sequential:
    """xtuner ``ProjectorModel`` depth 2 (``projector_text2vision.model.{0,2}``)."""
    return nn.Sequential(nn.Linear(hidden, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class OMGLLaVA(GCGModel):
    """OMG-Seg + projector + InternLM2 (as Llama) + text-to-vision projector, driven by the engine."""

    name = "omg_llava"

    def __init__(self, perception, projector: ObjectPixelProjector, text2vision: nn.Module, llm,
                 tokenizer, question_ids: list[list[int]], seg_token_id: int, stop_ids: list[int],
                 retry_questions: bool = False, details: dict | None = None):
        super().__init__()
        self.perception, self.projector, self.text2vision, self.llm = perception, projector, text2vision, llm
        self.tokenizer, self.question_ids = tokenizer, question_ids
        self.seg_token_id, self.stop_ids = seg_token_id, stop_ids
        self.retry_questions = retry_questions
        self.details = details or {}
        self.image_size = perception.image_size
        self.grid = perception.grid
        self.retries = 0  # extra generations run because an answer had no [SEG] (retry_questions)

    def begin_run(self) -> None:
        self.retries = 0  # retries_run counts one run's retries, also in a one-process sweep

    @property
    def deviations(self) -> dict:
        """How this differs from the upstream script (module docstring), for metrics.json."""
        return {"kv_cache": True, "attention": "sdpa", "batched": True,
                "keep_counts": "pixel tokens only; the separator and the K object tokens are always kept",
                "retry_questions": self.retry_questions, "retries_run": self.retries,
                "superpixel_image": f"padded square resized to {SUPERPIXEL_SIZE} px", **self.details}

    # --- inputs --------------------------------------------------------------------------
    def pixels(self, images: list[Image.Image]) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Padded, resized, normalised pixels [B, 3, S, S] and the squares ALTP segments."""
        squares = [expand_to_square(image.convert("RGB")) for image in images]
        size = self.image_size
        arrays = np.stack([np.asarray(s.resize((size, size), Image.BICUBIC), np.float32) / 255 for s in squares])
        mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
        pixels = (torch.from_numpy(arrays).permute(0, 3, 1, 2) - mean) / std
        return pixels, [superpixel_image(s) for s in squares]

    def encoder_view(self, image: Image.Image) -> np.ndarray:
        """The square ALTP segments for one image (``EngineInputs.images``), for the data
        pipeline's ``Pruner.prepare``."""
        return superpixel_image(expand_to_square(image.convert("RGB")))

    def engine_inputs(self, images: list[Image.Image], question: int = 0, prepared: list | None = None):
        """Prompt embeddings (left-padded to the longest K) and OMG-Seg's cache for [SEG] decoding;
        ``prepared``: the pruner's per-image prepare() states (altp.pipeline), or None."""
        pixels, squares = self.pixels(images)
        device = self.llm.device
        encoded = self.perception.encode(pixels.to(device))
        pixel_tokens, objects = self.projector(encoded.pixel_tokens, encoded.object_features, encoded.valid)
        dtype = self.llm.dtype
        ids = self.question_ids[question]
        start = ids.index(IMAGE_TOKEN_INDEX)
        text = self.llm.model.embed_tokens(torch.tensor([i for i in ids if i != IMAGE_TOKEN_INDEX], device=device))
        rows = [torch.cat([text[:start], pixels_b.to(dtype), objects_b.to(dtype), text[start:]])
                for pixels_b, objects_b in zip(pixel_tokens, objects)]
        length = max(len(r) for r in rows)
        embeds = text.new_zeros(len(rows), length, text.shape[-1])
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
        for b, row in enumerate(rows):
            embeds[b, length - len(row):], mask[b, length - len(row):] = row, 1
        pad = torch.tensor([length - len(r) for r in rows], device=device)
        inputs = EngineInputs(inputs_embeds=embeds, attention_mask=mask, visual_start=pad + start,
                              n_visual=self.n_visual, grid=self.grid, images=squares, prepared=prepared)
        return inputs, encoded

    # --- outputs -------------------------------------------------------------------------
    def answer(self, out: GenerationOutput, b: int) -> Answer:
        """Sample b's answer: stop token dropped, the [SEG] states of the positions whose input is
        a [SEG] (upstream ``get_seg_hidden_states``: hidden[t + 1] for a [SEG] at t), the caption
        cleaned as ``process_and_save_output`` (``<s>`` removed first)."""
        return decode_answer(out, b, lambda ids: decode(self.tokenizer, ids), self.stop_ids, self.seg_token_id,
                             seg_state="input", drop_bos=True)

    def seg_states(self, out: GenerationOutput, b: int) -> tuple[list[int], torch.Tensor]:
        """Generated ids (stop token dropped) and the states its masks are decoded from."""
        answer = self.answer(out, b)
        return answer.ids, out.hidden[b, answer.seg_steps]

    def masks(self, image: Image.Image, states: torch.Tensor, encoded, b: int) -> list[np.ndarray]:
        """[SEG] states -> bool masks at the original size (resize to the padded square, crop)."""
        if len(states) == 0:
            return []
        queries = self.text2vision(states.to(self.text2vision[0].weight.dtype))
        logits = self.perception.segment(queries, encoded, torch.full((len(states),), b, device=states.device))
        width, height = image.size
        side = max(width, height)
        logits = F.interpolate(logits[:, None].float(), size=(side, side), mode="bilinear", align_corners=False)[:, 0]
        top, left = (side - height) // 2, (side - width) // 2
        return list((logits[:, top:top + height, left:left + width] > 0).cpu().numpy())  # sigmoid > 0.5

    @torch.no_grad()
    def predict(self, images: list[Image.Image], engine: PruningEngine, max_new_tokens: int,
                prepared: list | None = None) -> tuple[list[GCGPrediction], GenerationOutput]:
        """``prepared``: the pruner's prepare() state per image (on ``encoder_view``), or None."""
        inputs, encoded = self.engine_inputs(images, prepared=prepared)
        out = engine.generate(inputs, max_new_tokens, eos_token_id=self.stop_ids)
        predictions = []
        for b, image in enumerate(images):
            answer = self.answer(out, b)
            if self.retry_questions and not answer.seg_steps:
                state = None if prepared is None else [prepared[b]]
                answer, states, encoded_b = self.retry(image, engine, max_new_tokens, state)
                masks = self.masks(image, states, encoded_b, 0)
            else:
                masks = self.masks(image, out.hidden[b, answer.seg_steps], encoded, b)
            predictions.append(GCGPrediction(answer.caption, answer.phrases, masks))
        return predictions, out

    def retry(self, image: Image.Image, engine: PruningEngine, max_new_tokens: int, prepared: list | None = None):
        """Upstream asks the next of its 6 questions until an answer has a [SEG] (§3.3); the
        last answer stands when none has. Off by default: it makes timing depend on answers."""
        for question in range(1, len(self.question_ids)):
            self.retries += 1
            inputs, encoded = self.engine_inputs([image], question, prepared)
            out = engine.generate(inputs, max_new_tokens, eos_token_id=self.stop_ids)
            answer = self.answer(out, 0)
            if answer.seg_steps:
                break
        return answer, out.hidden[0, answer.seg_steps], encoded
