"""ALTP and DDC-only: DDC's token map, DDF's Eq. 3-4 and allocation, and the pruners end to end.

* hand-computed: Eq. 3 densities, Eq. 4 weights, a 60/40 majority vote, ceil and surplus rules;
* properties: exact budget, capacities, one token per region whenever the budget allows;
* fast path: pooled moments give the full-resolution variance; area averaging keeps the mean;
* through PruningEngine on a tiny Llama with drawn images: exact budget, only visual tokens,
  deterministic, batch == single sample; keep = 1.0 changes nothing; the configs instantiate.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from llama_fixtures import embedded_batch, tiny_llama
from omegaconf import OmegaConf

from altp.altp import ALTP, DDCOnly, centroid_scores
from altp.ddc import area_resize, capture, token_regions
from altp.ddf import (
    density_allocation,
    density_weights,
    region_density,
    select_tokens,
    uniform_allocation,
    water_fill,
)
from altp.engine import EngineInputs, PruningEngine
from altp.pruning import NoPruning, build_pruner, visual_budget

LAYERS, STEPS, SIZE = 4, 2, 96
GRIDS = [(24, 24), (16, 16)]
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pruner"
PRUNERS = {"altp": ALTP, "ddc": DDCOnly}


def drawing(size: int, seed: int) -> np.ndarray:
    """Discs of random colours on a tinted, striped, noisy background: HxWx3 float in [0, 1]."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    image = 0.45 + 0.1 * np.sin(xs * rng.uniform(5, 30))[..., None] + 0.1 * ys[..., None] * \
        rng.uniform(-1, 1, 3)
    for _ in range(4):
        cy, cx, radius = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.05, 0.2)
        image[(ys - cy) ** 2 + (xs - cx) ** 2 < radius ** 2] = rng.uniform(0, 1, 3)
    return np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1)


# --- DDF: Eq. 3 and Eq. 4 -------------------------------------------------------------------
def test_region_density_by_hand():
    labels = np.zeros((4, 4), dtype=int)
    labels[:, 3] = 1  # region 0: 12 of 16 pixels, region 1: 4
    image = np.zeros((4, 4, 3))
    image[:2, :3, 0], image[2:, :3, 0] = 0.2, 0.6  # R: variance 0.04; G, B constant
    image[:, :3, 1] = 0.5
    image[:, 3] = np.array([0.0, 1.0, 0.0, 1.0])[:, None]  # every channel: variance 0.25
    expected = [0.04 / 3 * np.sqrt(12 / 16), 0.25 * np.sqrt(4 / 16)]
    np.testing.assert_allclose(region_density(labels, image, image ** 2), expected)


def test_density_weights_by_hand():
    # exp(d / (1.5 * 4)) = exp(1/6), exp(1/3), exp(2/3), normalised
    np.testing.assert_allclose(density_weights(np.array([1.0, 2.0, 4.0]), alpha=1.5),
                               [0.26109104, 0.30844262, 0.43046635], rtol=1e-7)
    np.testing.assert_allclose(density_weights(np.zeros(4)), np.full(4, 0.25))


# --- DDF: allocation -------------------------------------------------------------------------
def test_ceil_rule():
    # equal densities: T_k = 2.5 -> 3 tokens each (the excess is trimmed by select_tokens)
    assert density_allocation(np.zeros(2), np.array([10, 10]), 5).tolist() == [3, 3]
    # 21 / 7 is 3.0000000000000004 in floating point: still 3 tokens each, not 4
    assert np.ceil(water_fill(np.full(7, 1 / 7), np.full(7, 50), 21)).max() == 4
    assert density_allocation(np.zeros(7), np.full(7, 50), 21).tolist() == [3] * 7


def test_surplus_goes_to_the_other_regions_by_weight():
    shares = water_fill(np.array([0.5, 0.25, 0.25]), np.array([2, 100, 100]), 40)
    np.testing.assert_allclose(shares, [2, 19, 19])  # region 0 holds 2 of its 20
    # a tiny, detailed region: its share T_0 ~ 12.4 does not fit in its 1 token
    allocation = density_allocation(np.array([4.0, 1.0, 1.0]), np.array([1, 50, 50]), 30)
    assert allocation.tolist() == [1, 15, 15]  # the other 29 split 14.5 / 14.5, ceil
    # a region that won no token hands its whole share on
    allocation = density_allocation(np.array([9.0, 1.0, 1.0]), np.array([0, 20, 20]), 10)
    assert allocation.tolist() == [0, 5, 5]
    with pytest.raises(ValueError, match="exceeds"):
        water_fill(np.ones(2) / 2, np.array([1, 1]), 3)


def random_problems(count: int = 300):
    rng = np.random.default_rng(0)
    for trial in range(count):
        n_regions = int(rng.integers(1, 16))
        capacity = rng.integers(0, 80, n_regions)
        capacity[rng.integers(n_regions)] += 1  # at least one token
        density = rng.random(n_regions) * (rng.random(n_regions) < 0.8)
        total = int(capacity.sum())
        budget = [1, total, int(rng.integers(1, total + 1))][trial % 3]
        region = rng.permutation(np.repeat(np.arange(n_regions), capacity))
        yield density, capacity, budget, region, rng.random(total)


@pytest.mark.parametrize("allocate", [lambda d, c, b: density_allocation(d, c, b, 1.5),
                                      lambda d, c, b: uniform_allocation(c, b)],
                         ids=["density", "uniform"])
def test_allocation_properties(allocate):
    for density, capacity, budget, region, importance in random_problems():
        allocation = allocate(density, capacity, budget)
        assert (allocation >= 0).all() and (allocation <= capacity).all()
        # the ceils overshoot by less than one token per region, never undershoot
        assert budget <= allocation.sum() < budget + len(capacity)
        assert ((allocation >= 1) == (capacity >= 1)).all()  # every region with tokens: >= 1
        kept = select_tokens(region, importance, allocation, budget)
        assert len(kept) == budget and len(np.unique(kept)) == budget
        assert (np.diff(kept) > 0).all()
        per_region = np.bincount(region[kept], minlength=len(capacity))
        assert (per_region <= allocation).all()
        if budget >= (capacity > 0).sum():  # then every region with a token keeps one
            assert (per_region[capacity > 0] >= 1).all()


def test_select_tokens_by_hand():
    region = np.array([0, 0, 0, 1, 1])
    importance = np.array([0.1, 0.9, 0.5, 0.3, 0.2])
    assert select_tokens(region, importance, np.array([2, 1]), 3).tolist() == [1, 2, 3]
    # allocation 4 > budget 3: the least important non-first token (4) is trimmed
    assert select_tokens(region, importance, np.array([2, 2]), 3).tolist() == [1, 2, 3]
    # a region's most important token is trimmed last, however unimportant
    assert select_tokens(np.array([0, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.1]),
                         np.array([3, 1]), 2).tolist() == [0, 3]
    # an allocation short of the budget is filled by importance
    assert select_tokens(region, importance, np.array([0, 0]), 2).tolist() == [1, 2]


def test_uniform_ratio():
    # r = 40 / 160: ceil(25), ceil(12.5), ceil(2.5), 0 -- proportional to region size
    assert uniform_allocation(np.array([100, 50, 10, 0]), 40).tolist() == [25, 13, 3, 0]


# --- DDC -------------------------------------------------------------------------------------
def test_majority_vote_token_map():
    labels = np.zeros((10, 10), dtype=int)  # grid 2 x 2: 5 x 5 pixel patches
    labels[:3, :5] = 1  # token (0, 0): 15 pixels of region 1, 10 of region 0 (60 / 40)
    labels[5:, :5] = 2
    labels[5:7, 5:] = 2  # token (1, 1): 10 pixels of region 2, 15 of region 0
    assert token_regions(labels, (2, 2)).tolist() == [1, 0, 2, 0]


def test_proportional_patches_and_ties():
    # 10 rows on 3 token rows: pixel rows 0-3, 4-6, 7-9; every label a 10-pixel row: ties
    labels = np.repeat(np.arange(10)[:, None], 10, axis=1)
    assert token_regions(labels, (3, 3)).tolist() == [0, 0, 0, 4, 4, 4, 7, 7, 7]


def test_area_resize_keeps_the_mean_and_matches_block_means():
    image = np.random.default_rng(0).random((36, 48, 3))
    assert np.isclose(area_resize(image, 7, 5).mean(), image.mean())
    blocks = image.reshape(12, 3, 12, 4, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(area_resize(image, 12, 12), blocks)


def test_fast_density_is_the_full_resolution_variance():
    rng = np.random.default_rng(1)
    image, small = rng.random((48, 48, 3)), rng.integers(0, 5, (24, 24))
    full = np.kron(small, np.ones((2, 2), dtype=int))  # the small label map, upsampled
    pooled = area_resize(image, 24, 24), area_resize(image ** 2, 24, 24)
    np.testing.assert_allclose(region_density(small, *pooled),
                               region_density(full, image, image ** 2))


@pytest.mark.parametrize("slic_mode", ["literal", "fast"])
def test_capture_shapes(slic_mode):
    regions = capture(drawing(100, 3), (24, 24), slic_mode=slic_mode)  # 100 / 24: uneven patches
    assert regions.token_region.shape == (576,)
    assert regions.mean.shape[:2] == regions.labels.shape
    assert set(np.unique(regions.token_region)) <= set(range(regions.n_regions))
    with pytest.raises(ValueError, match="slic_mode"):
        capture(drawing(48, 0), (24, 24), slic_mode="exact")


def test_centroid_scores_rank_the_core_first():
    region = np.zeros(9, dtype=int)  # one region over a 3 x 3 grid
    scores = centroid_scores(region, np.arange(9), (3, 3))
    assert scores.argmax() == 4 and scores[0] == scores[8] == -2


# --- pruners end to end -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return tiny_llama(layers=LAYERS, hidden=32)


def batch(model, grid, size=SIZE) -> EngineInputs:
    inputs = embedded_batch(model, [3, 6], suffix_len=5, grid=grid)
    inputs.images = [drawing(size, 0), drawing(size, 1)]
    return inputs


def single(inputs: EngineInputs, b: int) -> EngineInputs:
    pad = int((inputs.attention_mask[b] == 0).sum())
    return EngineInputs(inputs.inputs_embeds[b:b + 1, pad:], inputs.attention_mask[b:b + 1, pad:],
                        inputs.visual_start[b:b + 1] - pad, inputs.n_visual, inputs.grid,
                        [inputs.images[b]])


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_keeps_exactly_the_budget(model, name, keep, grid):
    inputs, n_visual = batch(model, grid), grid[0] * grid[1]
    budget = visual_budget(keep, n_visual)
    pruner = PRUNERS[name](keep=keep)
    out = PruningEngine(model, pruner).generate(inputs, STEPS)
    assert out.visual_per_layer == [n_visual, n_visual, budget, budget]
    assert out.tokens_per_layer[2] == 3 + 5 + budget  # sample 0: all its text + kept visual
    kept = out.kept_grid_index[0]
    assert kept.shape == (2, budget)
    for image, row in zip(inputs.images, kept.numpy()):
        assert len(set(row)) == budget
        # budget >= regions here, so every region holding a token keeps one
        token_region = pruner.regions(image, grid).token_region
        assert set(token_region[row]) == set(token_region)
        if name == "ddc":  # uniform ratio: region k keeps at most ceil(r |Omega_k|)
            sizes = np.bincount(token_region)
            per_region = np.bincount(token_region[row], minlength=len(sizes))
            assert (per_region <= np.ceil(budget / n_visual * sizes - 1e-9)).all()


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_deterministic_and_batch_equals_single(model, name, grid):
    inputs, pruner = batch(model, grid), PRUNERS[name](keep=0.25)
    out = PruningEngine(model, pruner).generate(inputs, STEPS)
    again = PruningEngine(model, pruner).generate(inputs, STEPS)
    assert torch.equal(again.kept_grid_index[0], out.kept_grid_index[0])
    assert torch.equal(again.tokens, out.tokens)
    for b in range(2):
        alone = PruningEngine(model, pruner).generate(single(inputs, b), STEPS)
        assert torch.equal(alone.kept_grid_index[0][0], out.kept_grid_index[0][b])
        assert torch.equal(alone.tokens[0], out.tokens[b])


@pytest.mark.parametrize("options", [{"slic_mode": "fast"}, {"importance": "attn_next"},
                                     {"importance": "none", "layer": 0}], ids=str)
def test_options_keep_exactly_the_budget(model, options):
    inputs = batch(model, (24, 24), size=100)  # 100 px on 24 tokens: uneven patches
    out = PruningEngine(model, ALTP(keep=0.25, **options)).generate(inputs, STEPS)
    assert out.kept_grid_index[0].shape == (2, 144)


def test_keep_one_changes_nothing(model):
    inputs = batch(model, (16, 16))
    unpruned = PruningEngine(model, NoPruning()).generate(inputs, STEPS)
    assert torch.equal(PruningEngine(model, ALTP(keep=1.0)).generate(inputs, STEPS).tokens,
                       unpruned.tokens)


def test_bad_settings_raise(model):
    with pytest.raises(ValueError, match="slic_mode"):
        ALTP(slic_mode="exact")
    with pytest.raises(ValueError, match="importance"):
        ALTP(importance="norm")
    with pytest.raises(ValueError, match="layer >= 1"):
        DDCOnly(layer=0)
    inputs = batch(model, (16, 16))
    inputs.images = None
    with pytest.raises(ValueError, match="image"):
        PruningEngine(model, ALTP(keep=0.5)).generate(inputs, STEPS)


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_config_instantiates(name):
    root = OmegaConf.merge(OmegaConf.create({"keep": 0.25, "seed": 0}),
                           {"pruner": OmegaConf.load(CONFIGS / f"{name}.yaml")})
    pruner = build_pruner(root.pruner)
    assert type(pruner) is PRUNERS[name] and pruner.name == name and pruner.keep == 0.25
    described = pruner.describe()
    assert described["layers"] == [2] and described["slic_mode"] == "literal"
    assert ("alpha" in described) == (name == "altp")
    assert pruner.uses_image and pruner.uses_keep


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_prepared_state_gives_the_inline_tokens_without_slic(model, name, monkeypatch):
    inputs, pruner = batch(model, (24, 24)), PRUNERS[name](keep=0.1)
    inline = PruningEngine(model, pruner).generate(inputs, STEPS)
    prepared = [pruner.prepare(image, inputs.grid) for image in inputs.images]
    other_grid = [pruner.prepare(image, (16, 36)) for image in inputs.images]
    monkeypatch.setattr("altp.altp.capture", lambda *a, **k: pytest.fail("SLIC ran inside select"))
    inputs.prepared = prepared
    out = PruningEngine(model, pruner).generate(inputs, STEPS)
    assert torch.equal(out.kept_grid_index[0], inline.kept_grid_index[0]) and torch.equal(out.tokens, inline.tokens)
    assert pruner.prepares_images and not NoPruning().prepares_images
    inputs.prepared = other_grid
    with pytest.raises(ValueError, match="prepared state"):
        PruningEngine(model, pruner).generate(inputs, STEPS)
