"""eval.flops against the reference numbers of docs/upstream/pruning_methods.md §3.2 (LLaVA-1.5-7B /
GLaMM: d=4096, m=11008, 32 layers, 576 visual tokens), to the table's 0.1 % precision."""

import json

import pytest

from eval.flops import (
    flops_ratio,
    geometric_counts,
    layer_flops,
    main,
    multi_stage_schedule,
    single_stage_schedule,
)

D, M, L, N = 4096, 11008, 32, 576


def fastv_percent(layer, keep_tokens, text):
    tokens = single_stage_schedule(L, N, text, layer, keep_tokens)
    return round(100 * flops_ratio(tokens, N + text, D, M), 1)


@pytest.mark.parametrize("keep,text0,text36", [
    (57, 15.3, 20.1), (64, 16.4, 21.2), (72, 17.7, 22.4), (128, 26.6, 30.8),
    (144, 29.2, 33.2), (192, 36.9, 40.5), (288, 52.4, 55.2)])
def test_fastv_k2_table(keep, text0, text36):
    assert fastv_percent(2, keep, 0) == text0
    assert fastv_percent(2, keep, 36) == text36


@pytest.mark.parametrize("keep,text0,text36", [
    (57, 9.6, 14.8), (64, 10.8, 15.9), (128, 21.7, 26.2), (144, 24.5, 28.8),
    (192, 32.7, 36.5), (288, 49.3, 52.2)])
def test_pre_llm_table(keep, text0, text36):
    assert fastv_percent(0, keep, 0) == text0
    assert fastv_percent(0, keep, 36) == text36


@pytest.mark.parametrize("text,percent", [(0, 46.5), (36, 49.5), (60, 51.4), (100, 54.2)])
def test_pdrop_default_table(text, percent):
    counts = geometric_counts(N, 0.5, 3)
    assert counts == [288, 144, 72]
    tokens = multi_stage_schedule(L, N, text, list(zip([8, 16, 24], counts)))
    assert tokens == [N + text] * 8 + [288 + text] * 8 + [144 + text] * 8 + [72 + text] * 8
    assert sum(tokens) / L - text == 270  # the layer-averaged visual tokens
    assert round(100 * flops_ratio(tokens, N + text, D, M), 1) == percent


def test_fastv_k3_readme_setting():
    assert fastv_percent(3, 288, 36) == 56.7  # FastV README "K=3 R=50% (FLOPS=57%)"


@pytest.mark.parametrize("n,tflops", [(612, 3.18), (636, 3.31), (124, 0.63), (204, 1.04)])
def test_absolute_prefill_cost(n, tflops):
    assert round(L * layer_flops(n, D, M) / 1e12, 2) == tflops


def test_single_stage_schedule_layout():
    assert single_stage_schedule(4, 16, 3, 2, 4) == [19, 19, 7, 7]
    assert single_stage_schedule(4, 16, 0, 0, 4) == [4, 4, 4, 4]
    assert flops_ratio([19] * 4, 19, D, M) == 1.0


def test_stages_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        multi_stage_schedule(32, N, 0, [(16, 144), (8, 288)])
    with pytest.raises(ValueError, match="increasing"):
        multi_stage_schedule(32, N, 0, [(40, 144)])


@pytest.mark.parametrize("args,printed", [
    (["--schedule", "fastv", "--layer", "2", "--keep-tokens", "57"], "0.201"),
    (["--schedule", "fastv", "--layer", "2", "--keep-tokens", "144"], "0.332"),
    (["--schedule", "fastv", "--layer", "2", "--keep-tokens", "288"], "0.552"),
    (["--schedule", "pdrop", "--layers-list", "8", "16", "24", "--lambda", "0.5"], "0.495"),
])
def test_cli(args, printed, capsys):
    main(["--hidden", "4096", "--ffn", "11008", "--layers", "32", "--visual", "576",
          "--text", "36", *args])
    assert capsys.readouterr().out.strip() == printed


def test_cli_json_schedule(capsys):
    main(["--text", "36", "--schedule", "fastv", "--layer", "2", "--keep-tokens", "57", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert round(report["flops_ratio"], 3) == 0.201
    assert report["tokens_per_layer"] == [612, 612] + [93] * 30
    assert report["mean_visual_tokens"] == pytest.approx((2 * 576 + 30 * 57) / 32)
