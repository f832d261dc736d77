"""Baseline pruners end to end through the engine, plus each method's rule on hand-made inputs.

* every pruner keeps exactly its budget, only visual tokens, deterministically, and keep = 1.0
  changes nothing; a batch keeps the same sets as single-sample runs;
* FastV = top-k of layer K-1's eager attention row; PDrop's schedules; pool's spatial spread;
  DivPrune's and DART's greedy rules (DART against the authors' code: test_dart_parity.py);
  every configs/pruner file instantiates with Hydra.
"""

from pathlib import Path

import pytest
import torch
from llama_fixtures import embedded_batch, tiny_llama
from omegaconf import OmegaConf

from altp.engine import EngineInputs, PruningEngine
from altp.pruning import NoPruning, PruneContext, Pruner, build_pruner, visual_budget
from baselines.dart import DART
from baselines.divprune import DivPrune, max_min_diverse
from baselines.fastv import FastV
from baselines.pdrop import PyramidDrop
from baselines.pool import SpatialPool, lattice_cells
from baselines.random_keep import RandomKeep
from eval.flops import flops_ratio, multi_stage_schedule, single_stage_schedule

LAYERS = 8
STEPS = 4
PREFIX, SUFFIX = 3, 5
GRIDS = [(24, 24), (16, 16)]
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pruner"
PRUNERS = {
    "fastv": lambda keep: FastV(keep=keep),
    "pdrop": lambda keep: PyramidDrop(keep=keep, schedule="match_fastv", n_layers=LAYERS),
    "random": lambda keep: RandomKeep(keep=keep, seed=3),
    "pool": lambda keep: SpatialPool(keep=keep),
    "dart": lambda keep: DART(keep=keep),
    "divprune": lambda keep: DivPrune(keep=keep),
}


@pytest.fixture(scope="module")
def model():
    return tiny_llama(layers=LAYERS, hidden=32)


@pytest.fixture(scope="module")
def prompts(model):
    """Per grid: a one-sample prompt and what the unpruned model generates from it."""
    prompts = {}
    for grid in GRIDS:
        inputs = embedded_batch(model, [PREFIX], suffix_len=SUFFIX, grid=grid)
        prompts[grid] = inputs, PruningEngine(model, NoPruning()).generate(inputs, STEPS).tokens
    return prompts


def expected_visual_per_layer(pruner: Pruner, n_visual: int) -> list[int]:
    budgets = dict(zip(pruner.layers, pruner.stage_budgets(n_visual)))
    counts, current = [], n_visual
    for layer in range(LAYERS):
        current = min(current, budgets.get(layer, current))
        counts.append(current)
    return counts


def single(batch: EngineInputs, b: int) -> EngineInputs:
    """Sample b of a left-padded batch on its own, without padding."""
    pad = int((batch.attention_mask[b] == 0).sum())
    return EngineInputs(batch.inputs_embeds[b:b + 1, pad:], batch.attention_mask[b:b + 1, pad:],
                        batch.visual_start[b:b + 1] - pad, batch.n_visual, batch.grid)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_keeps_exactly_the_budget(model, prompts, name, keep, grid):
    inputs, unpruned_tokens = prompts[grid]
    n_visual = grid[0] * grid[1]
    pruner = PRUNERS[name](keep)
    if name != "pdrop":  # single stage: exactly floor(keep * N)
        assert pruner.stage_budgets(n_visual) == [visual_budget(keep, n_visual)]
    out = PruningEngine(model, pruner).generate(inputs, STEPS)
    assert out.visual_per_layer == expected_visual_per_layer(pruner, n_visual)
    assert [t - v for t, v in zip(out.tokens_per_layer, out.visual_per_layer)] == \
        [PREFIX + SUFFIX] * LAYERS  # every text token is still there
    previous = torch.arange(n_visual)
    for kept, n_kept in zip(out.kept_grid_index, sorted(set(out.visual_per_layer), reverse=True)[1:]):
        assert kept.shape == (1, n_kept) and kept.unique().numel() == n_kept
        assert bool(torch.isin(kept, previous).all())  # grid cells, and only surviving ones
        previous = kept
    if keep == 0.25:  # deterministic: a fresh pruner keeps the same sets
        again = PruningEngine(model, PRUNERS[name](keep)).generate(inputs, STEPS)
        assert all(torch.equal(a, b) for a, b in zip(out.kept_grid_index, again.kept_grid_index))
    if keep == 1.0:
        assert out.kept_grid_index == [] and torch.equal(out.tokens, unpruned_tokens)


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_batch_keeps_the_single_sample_sets(model, name):
    batch = embedded_batch(model, [2, 7, 4], suffix_len=SUFFIX, grid=(16, 16), seed=1)
    together = PruningEngine(model, PRUNERS[name](0.25)).generate(batch, STEPS)
    assert together.kept_grid_index
    for b in range(3):
        alone = PruningEngine(model, PRUNERS[name](0.25)).generate(single(batch, b), STEPS)
        for kept_batch, kept_alone in zip(together.kept_grid_index, alone.kept_grid_index):
            assert torch.equal(kept_batch[b], kept_alone[0])
        assert torch.equal(together.tokens[b], alone.tokens[0])


def test_fastv_is_topk_of_previous_layer_eager_attention():
    sdpa, eager = tiny_llama(layers=4), tiny_llama(layers=4)
    eager.config._attn_implementation = "eager"
    inputs = embedded_batch(sdpa, [3], grid=(16, 16))
    out = PruningEngine(sdpa, FastV(keep=0.25, layer=2)).generate(inputs, 1)
    with torch.no_grad():
        attentions = eager(inputs_embeds=inputs.inputs_embeds, output_attentions=True).attentions
    start = int(inputs.visual_start[0])
    row = attentions[1][0, :, -1].mean(0)[start:start + 256]  # layer K-1 = 1, last prompt token
    assert torch.equal(out.kept_grid_index[0][0], row.topk(64).indices.sort().values)


def test_pdrop_fixed_schedule_halves_at_8_16_24():
    model = tiny_llama(layers=26, hidden=32)
    inputs = embedded_batch(model, [3], grid=(24, 24))
    pruner = PyramidDrop(keep=0.1)  # fixed schedule: keep is not used
    out = PruningEngine(model, pruner).generate(inputs, 2)
    assert out.visual_per_layer == [576] * 8 + [288] * 8 + [144] * 8 + [72] * 2
    assert [k.shape[1] for k in out.kept_grid_index] == [288, 144, 72]
    for earlier, later in zip(out.kept_grid_index, out.kept_grid_index[1:]):
        assert bool(torch.isin(later, earlier).all())
    assert pruner.describe()["keep_used"] is False and pruner.describe()["lambda"] == 0.5


@pytest.mark.parametrize("n_visual", [576, 256])
@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5])
def test_pdrop_match_fastv_has_fastvs_flops(keep, n_visual):
    pruner = PyramidDrop(keep=keep, schedule="match_fastv")  # GLaMM shape: 32 layers, text 36
    assert pruner.layers == (2, 12, 22)
    budgets = pruner.stage_budgets(n_visual)
    assert budgets == sorted(budgets, reverse=True) and budgets[-1] < visual_budget(keep, n_visual)
    pdrop = multi_stage_schedule(32, n_visual, 36, list(zip(pruner.layers, budgets)))
    fastv = single_stage_schedule(32, n_visual, 36, 2, visual_budget(keep, n_visual))
    ratios = [flops_ratio(tokens, n_visual + 36, 4096, 11008) for tokens in (pdrop, fastv)]
    assert abs(ratios[0] - ratios[1]) < 0.01
    described = pruner.describe()
    assert described["keep_used"] and described["stage_budgets"] == {n_visual: budgets}
    assert 0 < described["lambda"][n_visual] < 1


def test_pdrop_refuses_schedules_that_do_not_fit():
    with pytest.raises(ValueError, match="increasing"):
        PyramidDrop(schedule="match_fastv", n_layers=4)
    with pytest.raises(ValueError, match="increasing"):
        PyramidDrop(layer_list=[16, 8])
    with pytest.raises(ValueError, match="schedule"):
        PyramidDrop(schedule="adaptive")


@pytest.mark.parametrize("grid,keep,block,exactly_one", [
    ((24, 24), 0.25, 2, True), ((16, 16), 0.25, 2, True), ((24, 24), 0.1, 6, False),
    ((16, 16), 0.1, 4, False), ((24, 24), 0.5, 2, False)])
def test_pool_spreads_over_the_grid(model, grid, keep, block, exactly_one):
    inputs = embedded_batch(model, [2], grid=grid)
    kept = PruningEngine(model, SpatialPool(keep=keep)).generate(inputs, 1).kept_grid_index[0][0]
    mask = torch.zeros(grid[0] * grid[1])
    mask[kept] = 1
    per_block = mask.view(grid[0] // block, block, grid[1] // block, block).sum(dim=(1, 3))
    assert bool((per_block == 1).all()) if exactly_one else bool((per_block >= 1).all())


def test_lattice_cells_are_distinct_for_every_budget():
    for rows in range(1, 9):
        for cols in range(1, 9):
            for budget in range(1, rows * cols + 1):
                cells = lattice_cells(budget, rows, cols)
                assert cells.unique().numel() == budget
                assert 0 <= int(cells.min()) and int(cells.max()) < rows * cols


def test_random_depends_on_the_seed_only(model):
    inputs = embedded_batch(model, [2, 5], grid=(16, 16))
    kept = [PruningEngine(model, RandomKeep(keep=0.25, seed=seed)).generate(inputs, 1)
            .kept_grid_index[0] for seed in (0, 0, 1)]
    assert torch.equal(kept[0], kept[1]) and torch.equal(kept[0][0], kept[0][1])
    assert not torch.equal(kept[0], kept[2])


def unit_vectors(degrees, norms=None):
    angles = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    vectors = torch.stack([angles.cos(), angles.sin()], dim=-1)
    return vectors * torch.tensor(norms, dtype=torch.float64)[:, None] if norms else vectors


def test_divprune_greedy_max_min_on_five_vectors():
    # nearest-neighbour angles: 10, 10, 45, 45, 110 degrees -> token 4 first; then the farthest
    # from the selected set: token 2 (160 deg from 4), token 0 (90 deg), token 3 (45 deg)
    points = unit_vectors([0, 10, 90, 135, 250], norms=[1.0, 5.0, 0.2, 3.0, 0.7])
    expected = {1: [4], 2: [2, 4], 3: [0, 2, 4], 4: [0, 2, 3, 4]}
    order = torch.tensor([3, 0, 4, 1, 2])  # the same points, shuffled, as a second sample
    batch = torch.stack([points, points[order]])
    for k, chosen in expected.items():
        selected = max_min_diverse(batch, k)
        assert selected[0].tolist() == chosen
        assert sorted(order[selected[1]].tolist()) == chosen


def test_divprune_never_repeats_a_token_among_duplicates():
    assert max_min_diverse(torch.ones(1, 4, 3), 3).tolist() == [[0, 1, 2]]


def dart_context(degrees, key_norms, n_visual, budget):
    """Visual tokens first, then text; 2-D unit hidden states; keys with the given L1 norms."""
    hidden = unit_vectors(degrees).float()[None]
    keys = torch.tensor(key_norms)[None, :, None].repeat(1, 1, 4) / 4
    n = len(degrees)
    return PruneContext(layer=2, stage=0, budget=budget, hidden=hidden,
                        visual_cols=torch.arange(n_visual)[None], grid_index=torch.arange(n_visual)[None],
                        grid=(1, n_visual), positions=torch.arange(n)[None], final_norm=lambda h: h,
                        _prev_keys=lambda: keys)


def test_dart_pivots_in_set_order_take_the_least_similar_tokens():
    # visual 0-7, text 8-9; pivots: image 0 and 5 (key norms 9, 8), text 9 (5 > 1).
    # upstream's order list({0, 5, 9}) is [0, 9, 5]: pivot 0 takes 2 (180 deg away), text
    # pivot 9 (250 deg) takes 4 (90 deg, 160 away), then pivot 5 (290 deg) takes 3 (135 deg);
    # in token order 5 would take 4 first and 9 then 6: the order changes the set
    degrees = [0, 20, 180, 135, 90, 290, 45, 300, 10, 250]
    key_norms = [9.0, 1, 1, 1, 1, 8, 1, 1, 1, 5]
    assert DART.pivot_order([0, 5], [9]) == [0, 9, 5]
    dart = DART(keep=0.5, n_pivots=2, n_text_pivots=1)
    assert dart.select(dart_context(degrees, key_norms, 8, 5)).tolist() == [[0, 2, 3, 4, 5]]
    # budget 7: 5 = 3 pivots x 1 + 2, filled one each by the first two pivots (0 -> 7, 9 -> 6)
    assert dart.select(dart_context(degrees, key_norms, 8, 7)).tolist() == [[0, 2, 3, 4, 5, 6, 7]]
    assert dart.describe()["budget_split"][7] == {"image_pivots": 2, "text_pivots": 1,
                                                  "per_pivot": 1, "filled": 2}
    assert DART(keep=0.5, n_pivots=4).select(dart_context(degrees, key_norms, 8, 1)).tolist() == [[0]]


@pytest.mark.parametrize("stem,policy", [
    ("none", "original"), ("fastv", "original"), ("pdrop", "renumber"), ("random", "original"),
    ("pool", "original"), ("dart", "original"), ("divprune", "renumber")])
def test_configs_instantiate(stem, policy):
    root = OmegaConf.create({"keep": 0.25, "seed": 7})
    cfg = OmegaConf.merge(root, {"pruner": OmegaConf.load(CONFIGS / f"{stem}.yaml")})
    pruner = build_pruner(cfg.pruner)
    assert pruner.name == stem and pruner.position_policy == policy
    if stem != "none":
        assert pruner.keep == 0.25
    if stem == "random":
        assert pruner.seed == 7
    assert isinstance(pruner.describe(), dict)
