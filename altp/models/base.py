"""The model interface: what every GCG model adapter gives the harness, and what adapters share.

The runner, the data pipeline, metrics.json, the logger and the scripts see a model only through
:class:`GCGModel`. An adapter (``tiny_gcg``, ``glamm``, ``omg_llava``) subclasses it and

* sets ``name`` (its model config's ``name``), ``llm`` (the transformers ``LlamaForCausalLM``-shaped
  causal LM that ``altp.engine.PruningEngine`` runs: ``.model.layers``, ``.model.norm``,
  ``.model.rotary_emb``, ``.model.embed_tokens``, ``.lm_head``, ``.config``) and ``grid`` (the
  visual-token grid, rows x cols, that pruners act on);
* implements ``encoder_view(image)`` (the image as its vision encoder sees it, what ALTP segments)
  and ``predict(images, engine, max_new_tokens, prepared=None) -> (predictions, generation output)``;
* may override ``deviations`` (how it differs from the upstream procedure, for metrics.json) and
  ``begin_run()`` (reset per-run counters: the runner keeps one model loaded across the runs of
  a one-process sweep).

``n_visual``, ``llm_shape``, ``device`` and ``dtype`` follow from those. ``check_model`` is what the
loader asks of whatever a model config's ``loader`` builds.

Shared by the adapters: :class:`GCGPrediction`, the answer decoding (:func:`decode_answer`: stop
token, [SEG] positions, GLaMM's caption clean-up) and :func:`resolve_dtype`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from altp.models.cleanup import clean_caption

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
SEG_STATES = ("produced", "input")


@dataclass
class GCGPrediction:
    caption: str
    phrases: list[str]
    masks: list[np.ndarray]  # bool, at the original image size, one per [SEG] in order


@dataclass(frozen=True)
class LLMShape:
    """The loaded LLM's shape: decoder layers, hidden size d, FFN size m (eval.flops' f(n))."""

    layers: int
    hidden: int
    ffn: int


class GCGModel(nn.Module):
    """Base class of the GCG model adapters (module docstring)."""

    name: str = ""
    llm: nn.Module  # set by the subclass
    grid: tuple[int, int]  # a class attribute, a property or set in __init__

    @property
    def n_visual(self) -> int:
        """Visual tokens per image that pruners act on (``keep`` counts these)."""
        return self.grid[0] * self.grid[1]

    @property
    def llm_shape(self) -> LLMShape:
        return llm_shape(self.llm)

    @property
    def device(self) -> torch.device:
        """Where the LLM runs."""
        return self.llm.device

    @property
    def dtype(self) -> torch.dtype:
        """The LLM's precision."""
        return self.llm.dtype

    @property
    def deviations(self) -> dict:
        """How this differs from the upstream inference procedure (metrics.json ``model_deviations``)."""
        return {}

    def begin_run(self) -> None:
        """Called by the runner before each run's predictions: reset what counts per run."""

    def encoder_view(self, image: Image.Image) -> np.ndarray:
        """The image as the vision encoder sees it, HxWx3 float in [0, 1]: what the engine hands
        pruners as ``EngineInputs.images`` and what the data pipeline's ``Pruner.prepare`` reads."""
        raise NotImplementedError

    def predict(self, images: list[Image.Image], engine, max_new_tokens: int,
                prepared: list | None = None) -> tuple[list[GCGPrediction], object]:
        """One prediction per image (caption, phrases, one mask per [SEG] at the image's size)
        and the engine's ``GenerationOutput``; ``prepared``: the pruner's ``prepare()`` state per
        image (computed on ``encoder_view``), or None."""
        raise NotImplementedError


ABSTRACT = ("encoder_view", "predict")


class Answer(NamedTuple):
    """One decoded answer (``decode_answer``)."""

    ids: list[int]
    seg_steps: list[int]
    caption: str
    phrases: list[str]


def interface_problems(model) -> list[str]:
    """What ``model`` lacks of the interface (empty when it satisfies it)."""
    if not isinstance(model, GCGModel):
        return [f"{type(model).__name__} is not an altp.models.base.GCGModel"]
    problems = [f"{member}() not implemented" for member in ABSTRACT
                if getattr(type(model), member) is getattr(GCGModel, member)]
    if not isinstance(getattr(model, "name", None), str) or not model.name:
        problems.append("no name")
    grid = getattr(model, "grid", None)
    if not (isinstance(grid, tuple) and len(grid) == 2 and all(isinstance(n, int) and n > 0 for n in grid)):
        problems.append(f"grid={grid!r} is not (rows, cols)")
    llm = getattr(model, "llm", None)
    if llm is None:
        problems.append("no llm (the causal LM the engine runs)")
    else:
        try:
            llm_shape(llm)
        except AttributeError as err:
            problems.append(f"llm is not a LlamaForCausalLM-shaped model ({err})")
    return problems


def llm_shape(llm: nn.Module) -> LLMShape:
    """The shape of a ``LlamaForCausalLM``-shaped model (what the engine runs)."""
    config = llm.config
    return LLMShape(len(llm.model.layers), config.hidden_size, config.intermediate_size)


def decode_answer(out, b: int, detokenize: Callable[[list[int]], str], stop_ids: int | Iterable[int],
                  seg_id: int, seg_state: str = "produced", drop_bos: bool = False) -> Answer:
    """Sample ``b`` of a ``GenerationOutput`` -> ``Answer(ids, seg_steps, caption, phrases)``.

    ``ids``: the generated ids, a final stop token dropped (the caption clean-up would remove its
    text anyway). ``seg_steps``: for each generated [SEG], the index into ``out.hidden[b]`` of the
    state its mask is decoded from: ``produced`` = the state of the step that produced it (GLaMM's
    one-position-shifted gather, groundingLMM issue #16); ``input`` = the state of the position
    whose input is the [SEG] (OMG-LLaVA's ``get_seg_hidden_states``), so a [SEG] generated last
    has none and is dropped. Caption and phrases: the detokenized ids through GLaMM's clean-up
    (``altp.models.cleanup``; ``drop_bos`` as OMG-LLaVA's ``process_and_save_output``).
    """
    if seg_state not in SEG_STATES:
        raise ValueError(f"seg_state must be one of {SEG_STATES}, got {seg_state!r}")
    stops = {int(stop_ids)} if isinstance(stop_ids, int) else {int(s) for s in stop_ids}
    ids = out.tokens[b, :out.lengths[b]].tolist()
    if seg_state == "produced":
        steps = [t for t, token in enumerate(ids) if token == seg_id]
    else:
        steps = [t + 1 for t, token in enumerate(ids[:-1]) if token == seg_id]
    if ids and ids[-1] in stops:
        ids = ids[:-1]
    caption, phrases = clean_caption(detokenize(ids), drop_bos=drop_bos)
    return Answer(ids, steps, caption, phrases)


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """auto: bfloat16 on a GPU (as GLaMM's infer.py and OMG-LLaVA's script), float32 on CPU (bf16
    matmuls are slow there)."""
    if dtype == "auto":
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        return torch.bfloat16 if cuda else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]
