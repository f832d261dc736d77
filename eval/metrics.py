"""Mask metrics of the GranD-f GCG protocol: AP50, greedy mIoU and greedy mask recall.

Each function reproduces one piece of ``groundingLMM eval/gcg/evaluate.py``
(``docs/upstream/grandf_eval.md`` §2.1, §2.3, §2.4); the docstrings say which and where we
differ in mechanics only. IoUs come from pycocotools' RLE arithmetic instead of decoding masks:
intersection and union are the same integer pixel counts, so the quotient is the same float.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def iou_matrix(pred_masks: Sequence[dict], gt_masks: Sequence[dict]) -> np.ndarray:
    """IoU of every (pred, gt) pair of same-size compressed RLEs, shape (n_pred, n_gt).

    GLaMM's ``compute_iou`` is ``sum(AND) / sum(OR)`` on decoded masks, which is NaN (0/0) when
    both masks are empty; we return NaN there too because NaN changes what both greedy loops do.
    """
    if not pred_masks or not gt_masks:
        return np.zeros((len(pred_masks), len(gt_masks)))
    ious = np.asarray(mask_utils.iou(list(pred_masks), list(gt_masks), [0] * len(gt_masks)), float)
    pred_empty = mask_utils.area(list(pred_masks)) == 0
    gt_empty = mask_utils.area(list(gt_masks)) == 0
    ious[np.outer(pred_empty, gt_empty)] = np.nan
    return ious


def greedy_miou(ious: np.ndarray) -> float:
    """One image's score, ``compute_miou``: take the global max, delete its row and column, repeat.

    Greedy, not Hungarian; stops when the matrix is empty or its max is not > 0 (a NaN max
    stops it too). Score = mean of the taken IoUs, 0.0 if none.
    """
    taken = []
    while ious.size > 0 and np.max(ious) > 0:
        row, col = np.unravel_index(np.argmax(ious), ious.shape)
        taken.append(ious[row, col])
        ious = np.delete(np.delete(ious, row, axis=0), col, axis=1)
    return float(np.mean(taken)) if taken else 0.0


@dataclass(frozen=True)
class RecallCandidates:
    """The (gt, pred) pairs ``find_best_matches`` visits if every text check passes, in order.

    The loop only zeroes rows and columns of accepted pairs, so the pairs it really visits are
    a prefix of this list: the prefix ends at the first pair whose text similarity is < 0.5.
    This lets the caller embed just the phrases of these pairs before walking the prefix.
    ``indexes_missing_phrase``: the loop then reaches an IoU-qualifying pair whose prediction
    has no phrase (more masks than phrases), where GLaMM's ``text_sims[i, j]`` raises
    IndexError and its caller counts 0 true positives for the image.
    """

    pairs: list[tuple[int, int]]
    indexes_missing_phrase: bool


def recall_candidates(ious_gt_pred: np.ndarray, n_phrases: int, iou_threshold: float = 0.5
                      ) -> RecallCandidates:
    """Walk ``find_best_matches``' greedy loop on the (gt, pred) IoU matrix, text checks aside."""
    ious = ious_gt_pred.copy()
    pairs: list[tuple[int, int]] = []
    while ious.size > 0:
        gt_index, pred_index = np.unravel_index(np.argmax(ious), ious.shape)
        if ious[gt_index, pred_index] < iou_threshold:  # False for NaN, as in GLaMM
            return RecallCandidates(pairs, False)
        if pred_index >= n_phrases:
            return RecallCandidates(pairs, True)
        pairs.append((int(gt_index), int(pred_index)))
        ious[gt_index, :] = 0
        ious[:, pred_index] = 0
    return RecallCandidates(pairs, False)


def true_positives(candidates: RecallCandidates, text_sims: Sequence[float],
                   text_sim_threshold: float = 0.5) -> int | None:
    """Matches GLaMM counts for one image, given the text similarity of each candidate pair.

    The first pair under the threshold ends the loop (``break``): later pairs never count.
    None: GLaMM's loop raises IndexError, which its caller swallows, so the image counts 0.
    """
    for accepted, similarity in enumerate(text_sims):
        if similarity < text_sim_threshold:
            return accepted
    return None if candidates.indexes_missing_phrase else len(candidates.pairs)


def ap50(mask_gt: dict, results: list[dict], image_ids: Sequence[str]) -> float:
    """AP at IoU 0.50, area all, 100 dets (``COCOeval.stats[1]``), class-agnostic segm.

    ``results``: ``{"image_id", "category_id": 1, "segmentation", "score": 1.0}`` in prediction
    order (equal scores: the stable sort ranks by that order). ``image_ids``: every evaluated GT
    image (the full split in GLaMM's protocol; a ``data.limit`` subset scores only its images);
    ids absent from the mask GT ``images`` are added so results on them load (GLaMM's
    ``loadRes`` would assert). The caller's ``mask_gt`` is not modified: pycocotools writes
    ``ignore`` into GT annotations, so it gets copies, plus the ``info`` key that pycocotools
    2.0.9/2.0.10 require and ``iscrowd=0`` / RLE ``area`` where an annotation lacks them.
    No results: 0.0 (pycocotools' ``loadRes`` raises IndexError on an empty list).
    """
    if not results:
        return 0.0
    known = {image["id"] for image in mask_gt["images"]}
    dataset = {
        **mask_gt,
        "info": mask_gt.get("info", {}),
        "images": mask_gt["images"] + [{"id": i} for i in image_ids if i not in known],
        "annotations": [_complete_gt_annotation(ann) for ann in mask_gt["annotations"]],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports progress with print()
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "segm")
        coco_eval.params.catIds = [1]
        coco_eval.params.imgIds = list(image_ids)  # = every GT image for a full split, as GLaMM
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return float(coco_eval.stats[1])


def _complete_gt_annotation(ann: dict) -> dict:
    complete = dict(ann)
    complete.setdefault("iscrowd", 0)
    if "area" not in complete:
        complete["area"] = float(mask_utils.area(ann["segmentation"]))
    return complete
