"""tiny_gcg: a GLaMM-shaped grounded-conversation model small enough to train on a CPU.

Same data flow as GLaMM (groundingLMM ``eval/gcg/infer.py``, see altp/models/glamm), scaled down:

    image (192 px) -> conv vision encoder -> 24 x 24 = 576 visual tokens (+ 2-D position embedding,
    as CLIP has) -> MLP projector -> spliced into the prompt at <image>
    -> transformers LlamaForCausalLM, run by our PruningEngine (pruners act here)
    -> for every generated [SEG]: the final-norm hidden state of the step that produced it
    -> text_hidden_fcs -> mask head: coarse map on the encoder's 24 x 24 tokens, refined on its
       48 x 48 and sharpened on its 96 x 96 pixel features (the SAM role)

The prompt has text before and after the image (system text, then the instruction), so "the
last prompt token" and text-token FLOPs mean what they mean for GLaMM. The tokenizer is
word-level: the synthetic captions use a closed vocabulary (altp.data.synthetic.VOCAB).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from altp.engine import EngineInputs, GenerationOutput, PruningEngine
from altp.models.base import GCGModel, GCGPrediction, decode_answer

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<im_start>", "<im_end>"]
SYSTEM_TEXT = "A chat between a curious user and an assistant . USER :"
INSTRUCTION = "Describe the image in detail with interleaved segmentation masks . ASSISTANT :"
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25
WEIGHTS_DIR = Path(__file__).parent / "weights"


class WordTokenizer:
    """Space-separated words <-> ids: special tokens, the content words, then the prompt's words."""

    def __init__(self, words: list[str]):
        prompt_words = f"{SYSTEM_TEXT} {INSTRUCTION}".split()
        self.vocab = list(SPECIAL_TOKENS) + list(dict.fromkeys(
            w for w in [*words, *prompt_words] if w not in SPECIAL_TOKENS))
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        self.image_id = self.ids["<image>"]
        self.seg_id = self.ids["[SEG]"]

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(word, self.unk_id) for word in text.split()]

    def decode(self, ids) -> str:
        return " ".join(self.vocab[int(i)] for i in ids)

    def prompt_ids(self, prefix: Sequence[int] = (), instruction: str = INSTRUCTION) -> list[int]:
        """<s> system <im_start> <image> <im_end> instruction — one id stands for the image.
        ``prefix``: extra ids after <s> (training varies the text before the image with it);
        ``instruction``: training also asks for a short caption."""
        return [self.bos_id, *prefix, *self.encode(f"{SYSTEM_TEXT} <im_start> <image> <im_end> {instruction}")]


@dataclass
class TinyGCGConfig:
    vocab: list[str] = field(default_factory=list)  # content words; special tokens are added
    image_size: int = 192
    grid: int = 24
    pixel_dim: int = 64  # channels of the stride-4 pixel features the mask head reads
    token_dim: int = 128  # vision-encoder width at the token grid
    hidden: int = 128  # LLM width
    layers: int = 16  # the packaged model (configs/model/tiny_gcg.yaml llm.layers)
    heads: int = 4
    intermediate: int = 384
    mask_dim: int = 64


def _conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GELU())


class VisionEncoder(nn.Module):
    """Conv stem: stride-2 and stride-4 pixel features for masks, stride-(size/grid) tokens for the LLM."""

    def __init__(self, cfg: TinyGCGConfig):
        super().__init__()
        stride = cfg.image_size // cfg.grid
        self.pixel = nn.Sequential(_conv(3, 32, 2), _conv(32, cfg.pixel_dim, 2), _conv(cfg.pixel_dim, cfg.pixel_dim))
        self.tokens = nn.Sequential(_conv(cfg.pixel_dim, cfg.token_dim, stride // 4), _conv(cfg.token_dim, cfg.token_dim),
                                    nn.Conv2d(cfg.token_dim, cfg.token_dim, 1))
        side = cfg.image_size // 4
        self.token_pos = nn.Parameter(torch.randn(cfg.grid * cfg.grid, cfg.token_dim) * 0.02)
        self.pixel_pos = nn.Parameter(torch.randn(cfg.pixel_dim, side, side) * 0.02)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> tokens [B, grid², token_dim], stride-4 features [B, pixel_dim, S/4, S/4] and the
        stride-2 stem output [B, 32, S/2, S/2] (the mask head sharpens edges with it)."""
        fine = self.pixel[0](pixels)
        features = self.pixel[1:](fine)
        tokens = self.tokens(features).flatten(2).transpose(1, 2) + self.token_pos
        return tokens, features + self.pixel_pos, fine


class MaskHead(nn.Module):
    """SAM-lite: the [SEG] query first finds its object on the token grid (a dot product with
    the encoder's tokens, which know each object's size, colour and shape), then a small conv
    stack refines that coarse map at stride 4 with the pixel features (edges, exact extent).

    A per-pixel MLP on pixel features alone could not do the first step: a stride-4 pixel sees
    ~15 px, so two red circles of different sizes look alike to it. The head reads the full
    encoder output, as GLaMM's SAM reads the full image: pruning never reaches it.
    Small objects (a 12 px circle is 3 stride-4 cells) lose their outline in a stride-4 map, so
    a last stage adds a correction at stride 2 from the stem's edges (U-Net-style skip).
    ``project`` runs once per image; ``forward`` once per mask.
    """

    def __init__(self, cfg: TinyGCGConfig):
        super().__init__()
        self.pixel_proj = nn.Conv2d(cfg.pixel_dim, cfg.mask_dim, 1)
        self.token_proj = nn.Linear(cfg.token_dim, cfg.mask_dim)
        self.query_proj = nn.Linear(cfg.mask_dim, cfg.mask_dim)
        self.refine = nn.Sequential(nn.Conv2d(cfg.mask_dim + 1, 32, 3, 1, 1), nn.GELU(),
                                    nn.Conv2d(32, 32, 3, 1, 1), nn.GELU(), nn.Conv2d(32, 1, 3, 1, 1))
        self.fine_proj = nn.Conv2d(32, 16, 1)
        self.sharpen = nn.Sequential(nn.Conv2d(17, 16, 3, 1, 1), nn.GELU(), nn.Conv2d(16, 1, 3, 1, 1))
        nn.init.zeros_(self.sharpen[-1].weight)  # a residual correction: starts as plain upsampling
        nn.init.zeros_(self.sharpen[-1].bias)

    def project(self, tokens: torch.Tensor, features: torch.Tensor, fine: torch.Tensor):
        """The encoder's tokens, stride-4 and stride-2 features -> mask space (once per image)."""
        return self.token_proj(tokens), self.pixel_proj(features), self.fine_proj(fine)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, projected: torch.Tensor, fine: torch.Tensor,
                size: int) -> torch.Tensor:
        """queries [n, d], token keys [n, grid², d], stride-4 [n, d, h, w] and stride-2 [n, 16, 2h, 2w]
        features -> logits [n, size, size]."""
        n, tokens, dim = keys.shape
        grid = math.isqrt(tokens)
        coarse = torch.einsum("nd,ntd->nt", queries, keys).view(n, 1, grid, grid) / math.sqrt(dim)
        coarse = F.interpolate(coarse, size=projected.shape[-2:], mode="bilinear", align_corners=False)
        local = F.gelu(projected + self.query_proj(queries)[:, :, None, None])
        logits = self.refine(torch.cat([local, coarse], 1)) + coarse
        logits = F.interpolate(logits, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        logits = logits + self.sharpen(torch.cat([fine, logits], 1))
        return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


class TinyGCG(GCGModel):
    name = "tiny_gcg"

    def __init__(self, cfg: TinyGCGConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = WordTokenizer(cfg.vocab)
        self.vision = VisionEncoder(cfg)
        self.projector = nn.Sequential(nn.Linear(cfg.token_dim, cfg.hidden), nn.GELU(),
                                       nn.Linear(cfg.hidden, cfg.hidden))
        self.llm = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(self.tokenizer.vocab), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
            num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
            max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            tie_word_embeddings=False, attn_implementation="sdpa"))
        self.text_hidden_fcs = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(),
                                             nn.Linear(cfg.hidden, cfg.mask_dim))
        self.mask_head = MaskHead(cfg)

    # --- inputs --------------------------------------------------------------------------
    def pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 HxWx3 images (already image_size square) -> normalised [B, 3, H, W]."""
        size = self.cfg.image_size
        for image in images:
            if image.shape != (size, size, 3):
                raise ValueError(f"tiny_gcg expects {size}x{size} RGB images, got {image.shape}")
        array = np.stack(images).astype(np.float32) / 255.0
        return (torch.from_numpy(array).permute(0, 3, 1, 2) - PIXEL_MEAN) / PIXEL_STD

    def embed_prompt(self, pixels: torch.Tensor, answer_ids: torch.Tensor | None = None, encoded=None,
                     prefix: Sequence[int] = (), instruction: str = INSTRUCTION):
        """Prompt (+ optional teacher-forced answer) embeddings with the image spliced in.

        Returns (embeds [B, T, d], visual_start, the vision encoder's output (tokens, features,
        fine)). ``encoded``: that output when the caller already has it; ``prefix``: see
        ``WordTokenizer.prompt_ids``, as is ``instruction``. Every sample shares the prompt, so no padding is needed
        here; the engine still supports padded batches.
        """
        encoded = encoded if encoded is not None else self.vision(pixels)
        visual = self.projector(encoded[0])
        prompt = self.tokenizer.prompt_ids(prefix, instruction)
        start = prompt.index(self.tokenizer.image_id)
        ids = torch.tensor(prompt, device=pixels.device)
        text = self.llm.model.embed_tokens(ids).expand(pixels.shape[0], -1, -1)
        parts = [text[:, :start], visual, text[:, start + 1:]]
        if answer_ids is not None:
            parts.append(self.llm.model.embed_tokens(answer_ids))
        return torch.cat(parts, dim=1), start, encoded

    def resized(self, image: Image.Image) -> np.ndarray:
        """The uint8 image_size x image_size RGB array the encoder reads."""
        size = self.cfg.image_size
        return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))

    @staticmethod
    def _view(array: np.ndarray) -> np.ndarray:
        return array.astype(np.float32) / 255.0

    def encoder_view(self, image: Image.Image) -> np.ndarray:
        """The image as the encoder sees it, HxWx3 float in [0, 1]: ``EngineInputs.images``
        (what ALTP segments), for the data pipeline's ``Pruner.prepare``."""
        return self._view(self.resized(image))

    @property
    def grid(self) -> tuple[int, int]:
        return (self.cfg.grid, self.cfg.grid)

    def engine_inputs(self, images: list[np.ndarray], prepared: list | None = None
                      ) -> tuple[EngineInputs, tuple[torch.Tensor, ...]]:
        """``prepared``: the pruner's per-image prepare() states (altp.pipeline), or None."""
        pixels = self.pixels(images).to(self.llm.device)
        embeds, start, encoded = self.embed_prompt(pixels)
        batch = embeds.shape[0]
        inputs = EngineInputs(
            inputs_embeds=embeds,
            attention_mask=torch.ones(batch, embeds.shape[1], dtype=torch.long, device=embeds.device),
            visual_start=torch.full((batch,), start, device=embeds.device), n_visual=self.cfg.grid ** 2,
            grid=self.grid, images=[self._view(im) for im in images], prepared=prepared)
        return inputs, encoded

    def mask_logits(self, seg_hidden: torch.Tensor, encoded: tuple[torch.Tensor, torch.Tensor],
                    image_of: torch.Tensor) -> torch.Tensor:
        """[SEG] states [n, d], the vision encoder's output for the batch, image index [n] ->
        logits [n, H, W]."""
        keys, projected, fine = self.mask_head.project(*encoded)
        return self.mask_head(self.text_hidden_fcs(seg_hidden), keys[image_of], projected[image_of], fine[image_of],
                              self.cfg.image_size)

    @torch.no_grad()
    def predict(self, images: list[Image.Image], engine: PruningEngine, max_new_tokens: int,
                prepared: list | None = None) -> tuple[list[GCGPrediction], GenerationOutput]:
        """Caption + one mask per generated [SEG] for each image (resized to image_size and back).

        The caption and phrases go through GLaMM's clean-up (altp.models.cleanup); masks are the mask
        logits resized to the original image size, thresholded at 0 (as GLaMM). ``prepared``:
        the pruner's prepare() state per image (computed on ``encoder_view``), or None.
        """
        inputs, encoded = self.engine_inputs([self.resized(im) for im in images], prepared)
        out = engine.generate(inputs, max_new_tokens, eos_token_id=self.tokenizer.eos_id)
        answers = [decode_answer(out, b, self.tokenizer.decode, self.tokenizer.eos_id, self.tokenizer.seg_id)
                   for b in range(len(images))]
        steps = [answer.seg_steps for answer in answers]
        # every [SEG] of the batch in one mask-head call: the per-image projection runs once
        image_of = torch.tensor([b for b, s in enumerate(steps) for _ in s], dtype=torch.long)
        if len(image_of):
            states = out.hidden[image_of.to(out.hidden.device), [t for s in steps for t in s]]
            all_logits = self.mask_logits(states, encoded, image_of.to(out.hidden.device)).split(
                [len(s) for s in steps])
        predictions = []
        for b, (image, answer) in enumerate(zip(images, answers)):
            masks = []
            if steps[b]:
                logits = F.interpolate(all_logits[b][:, None], size=(image.height, image.width), mode="bilinear",
                                       align_corners=False)[:, 0]
                masks = list((logits > 0).cpu().numpy())
            predictions.append(GCGPrediction(answer.caption, answer.phrases, masks))
        return predictions, out

    # --- persistence ---------------------------------------------------------------------
    def save(self, directory: Path, card: dict | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps(asdict(self.cfg), indent=1) + "\n")
        if card is not None:
            (directory / "card.json").write_text(json.dumps(card, indent=1) + "\n")


def weights_fingerprint(directory: str | Path | None = None) -> str:
    """sha1 of the weights file: part of a run's identity, so results of other (e.g. retrained
    packaged) weights are never taken for this model's."""
    path = Path(directory or WEIGHTS_DIR) / "model.safetensors"
    return hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def check_weights(directory: str | Path | None = None) -> str | None:
    """One-line problem with the weights folder (the runner's preflight), or None when loadable."""
    directory = Path(directory or WEIGHTS_DIR)
    missing = [f for f in ("config.json", "model.safetensors") if not (directory / f).is_file()]
    if missing:
        return (f"model.weights={directory}: {', '.join(missing)} missing; use null for the "
                "packaged weights or train: python scripts/train_tiny_gcg.py --out DIR")
    return None


def load_tiny_gcg(directory: str | Path | None = None) -> TinyGCG:
    """Load the packaged (``None``) or any saved tiny model; a missing file is a one-line error."""
    directory = Path(directory or WEIGHTS_DIR)
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"tiny_gcg weights: {directory / name} is missing; the package ships "
                                    "them in altp/models/weights (retrain: python scripts/train_tiny_gcg.py)")
    model = TinyGCG(TinyGCGConfig(**json.loads((directory / "config.json").read_text())))
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model.eval()
