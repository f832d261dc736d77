"""What a tiny_gcg's [SEG] mask queries know, and in which layers they look at their object.

    python scripts/probe_seg_queries.py [WEIGHTS_DIR] [--scenes 60] [--ranking-only]

1. Held-out accuracy of a linear probe for the size, colour and shape of each query's phrase
   (teacher-forced on the training stream).
2. Per LLM layer, the head-averaged attention mass that the position producing [SEG] puts on
   its object's visual tokens (patch covered >= 20 %), beside the uniform share: the layers
   that need the object's tokens, so the layers where dropping them costs most.
3. Per layer, how much of the answer positions' attention goes to the image at all (real
   LLaVA-family models read it in shallow layers and barely attend to it deep down, the
   premise of FastV and PyramidDrop), and whether the last prompt token's top-10 % visual
   tokens lie on objects (what FastV and PyramidDrop keep).
4. That share again under the prompts of the two training-only tasks (the short caption, the
   object question), whose first answer word needs the image, beside GCG's, whose does not.

A query that the probe reads at chance for colour and shape can only tell the mask head "a
small object": its masks then cover every object of that size (what the first deep testbed
did). Chance is about 1/2 for size, 1/9 for colour and 1/7 for shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from altp.data.synthetic import render_scene, scene_seed  # noqa: E402
from altp.models.tiny_gcg import INSTRUCTION, load_tiny_gcg  # noqa: E402
from scripts.train_tiny_gcg import (  # noqa: E402
    ATTRIBUTES,
    SHORT_INSTRUCTION,
    answer_states,
    make_batch,
    object_question,
)

PROBE_SEED = 9  # training-stream scenes no training run of seed 0 draws first
# The prompts whose last token the ranking figure reads: GCG's (what pruners see at inference)
# and the training-only tasks' (the short caption; a question about one object of the scene).
TASKS = ("gcg", "short", "question")


def _instruction(task: str, sample, index: int) -> str:
    if task == "question":
        return object_question(sample.phrases, PROBE_SEED, index, 0)[0]
    return {"gcg": INSTRUCTION, "short": SHORT_INSTRUCTION}[task]


@torch.no_grad()
def seg_queries(model, scenes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask queries [n, mask_dim] of every [SEG] and their phrase classes [n, 3]."""
    queries, labels = [], []
    for index in range(scenes):
        sample = render_scene(scene_seed(PROBE_SEED, "train", index), model.cfg.image_size, 1, 6)
        pixels, ids, _, words = make_batch(model, [sample], torch.device("cpu"))
        states, _ = answer_states(model, pixels, ids, [], torch.zeros(1, 1, dtype=torch.long))
        queries.append(model.text_hidden_fcs(states[0, ids[0] == model.tokenizer.seg_id]))
        labels.append(words)
    return torch.cat(queries), torch.cat(labels)


def _attention_maps(model, index: int, task: str = "gcg"):
    """Eager-attention maps of one teacher-forced probe scene: (per-layer attentions [heads,
    seq, seq], answer ids, first visual position, prompt length, per-object patch cover [n, grid²]).
    ``task`` (one of TASKS): whose instruction the prompt ends with; the GCG answer follows it
    either way (attention is causal: the prompt's own rows never see it)."""
    grid = model.cfg.grid
    sample = render_scene(scene_seed(PROBE_SEED, "train", index), model.cfg.image_size, 1, 6)
    pixels, ids, _, _ = make_batch(model, [sample], torch.device("cpu"))
    embeds, visual_start, _ = model.embed_prompt(pixels, ids, encoded=model.vision(pixels),
                                                 instruction=_instruction(task, sample, index))
    config, previous = model.llm.config, model.llm.config._attn_implementation
    config._attn_implementation = "eager"  # sdpa returns no attention weights; the caller's model keeps its own
    try:
        attentions = [a[0] for a in model.llm.model(inputs_embeds=embeds, output_attentions=True).attentions]
    finally:
        config._attn_implementation = previous
    n, height, width = sample.masks.shape
    cover = torch.from_numpy(sample.masks.reshape(n, grid, height // grid, grid, width // grid).mean(axis=(2, 4)))
    return attentions, ids, visual_start, embeds.shape[1] - ids.shape[1], cover.flatten(1)


@torch.no_grad()
def object_attention(model, scenes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer: mean attention mass of [SEG]-producing positions on their object's tokens,
    and the mass a uniform spread over all positions would give them."""
    on_object, uniform = [], []
    for index in range(scenes):
        attentions, ids, visual_start, prompt_len, cover = _attention_maps(model, index)
        producing = prompt_len - 1 + (ids[0] == model.tokenizer.seg_id).nonzero()[:, 0]
        members = (cover >= 0.2).float()
        visual = torch.stack([a[:, producing, visual_start:visual_start + cover.shape[1]].mean(0) for a in attentions])
        on_object.append((visual * members).sum(-1))  # [layers, n]
        uniform.append((members.sum(-1) / (producing + 1)).expand_as(on_object[-1]))
    return torch.cat(on_object, 1).mean(1), torch.cat(uniform, 1).mean(1)


@torch.no_grad()
def reading_and_ranking(model, scenes: int, keep: float = 0.1, task: str = "gcg") -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per layer: the share of attention that answer-producing positions put on the image (where
    in depth the model reads it), and the share of the last prompt token's top-``keep`` visual
    tokens that lie on an object (what FastV, K-1 = that layer, and PDrop rank by); then the
    objects' share of the image, the second figure's chance level. ``task``: see _attention_maps."""
    reading, ranking, objects = [], [], []
    for index in range(scenes):
        attentions, _, visual_start, prompt_len, cover = _attention_maps(model, index, task)
        on_object = (cover.max(0).values >= 0.2).float()
        image = slice(visual_start, visual_start + cover.shape[1])
        reading.append(torch.stack([a[:, prompt_len - 1:-1, image].sum(-1).mean() for a in attentions]))
        last = torch.stack([a[:, prompt_len - 1, image].mean(0) for a in attentions])
        top = last.topk(max(1, int(keep * cover.shape[1])), dim=-1).indices
        ranking.append(on_object[top].mean(-1))
        objects.append(on_object.mean())
    return torch.stack(reading).mean(0), torch.stack(ranking).mean(0), torch.stack(objects).mean().item()


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, classes: int, train_share: float = 0.7) -> float:
    """Held-out accuracy of an L2-regularised softmax regression on standardised features."""
    split = int(train_share * len(features))
    mean, std = features[:split].mean(0), features[:split].std(0) + 1e-6
    x = (features - mean) / std
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x[:split] @ weight + bias, labels[:split]) + 1e-3 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return ((x[split:] @ weight + bias).argmax(1) == labels[split:]).float().mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="?", default=None, help="weights folder (default: the packaged weights)")
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--ranking-only", action="store_true", help="only the last prompt token's ranking by prompt (4.)")
    args = parser.parse_args(argv)
    model = load_tiny_gcg(args.weights).eval()
    if args.ranking_only:
        return print_ranking_by_prompt(model, args.scenes, reading_and_ranking(model, args.scenes)[1])
    queries, labels = seg_queries(model, args.scenes)
    print(f"{len(queries)} [SEG] queries of {args.scenes} scenes; held-out linear-probe accuracy:")
    for row, (name, classes) in enumerate(zip(("size", "colour", "shape"), ATTRIBUTES)):
        print(f"  {name:7s} {probe_accuracy(queries, labels[:, row], len(classes)):.2f}  (chance {1 / len(classes):.2f})")
    on_object, uniform = object_attention(model, args.scenes)
    print("attention mass of the [SEG]-producing position on its object, per layer (uniform spread):")
    for layer, (mass, share) in enumerate(zip(on_object.tolist(), uniform.tolist())):
        print(f"  layer {layer:2d}  {mass:.3f}  ({share:.3f})")
    reading, ranking, objects = reading_and_ranking(model, args.scenes)
    print("per layer: attention share of answer positions on the image | share of the last prompt token's "
          f"top-10 % visual tokens on an object (objects cover {objects:.3f} of the image):")
    for layer, (read, ranked) in enumerate(zip(reading.tolist(), ranking.tolist())):
        print(f"  layer {layer:2d}  {read:.3f} | {ranked:.3f}")
    print_ranking_by_prompt(model, args.scenes, ranking)


def print_ranking_by_prompt(model, scenes: int, gcg_ranking: torch.Tensor) -> None:
    # The ranking depends on what the prompt asks: GCG's answer opens with "The image shows a"
    # whatever the image, so only the training tasks' last token needs the image to answer.
    others = {task: reading_and_ranking(model, scenes, task=task)[1] for task in TASKS[1:]}
    print("share of the last prompt token's top-10 % visual tokens on an object, per layer, by prompt "
          "(gcg | short caption | object question):")
    for layer, ranked in enumerate(gcg_ranking.tolist()):
        print(f"  layer {layer:2d}  {ranked:.3f} | {others['short'][layer]:.3f} | {others['question'][layer]:.3f}")


if __name__ == "__main__":
    main()
