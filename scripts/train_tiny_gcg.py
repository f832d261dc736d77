"""Train tiny_gcg on the synthetic training stream, unpruned (as GLaMM is trained).

    python scripts/train_tiny_gcg.py --perception-from PERCEPTION --out DIR      # start
    python scripts/train_tiny_gcg.py --perception-from PERCEPTION --out DIR --resume  # continue

Loss = next-token cross entropy on the answer ("The image shows a <p> small red circle </p>
[SEG] ...", then </s>) + mask loss (BCE + Dice) for every [SEG], whose query is the final-norm
hidden state of the position that *produced* [SEG]: exactly what the engine hands the mask head
at inference. One training-only aid (``QueryReadout``, ``--query-readout``): the phrase's size,
colour and shape are read linearly out of each [SEG]'s mask query. It sits on the model's
output, like the mask loss: no loss touches the LLM's attention or any inner layer, so the
layers where pruners read (FastV: K-1) and act (K, PDrop's stages) learn whatever the task
makes them learn.

The recipe follows GLaMM's (GLaMM paper Sec. 3-4): its perception (CLIP, SAM's encoder) comes
pretrained and stays frozen while the projector, the LLM and the mask decoder are trained.
Here the perception is an earlier tiny_gcg's vision encoder (``--perception-from``: a weights
folder whose encoder was trained with a dense token-attribute loss, the role CLIP
pre-training plays); its mask head, projector and token embeddings initialise ours and keep
training. The decoder layers start fresh.

What a pretrained LLM brings that a from-scratch one lacks is robustness to where things sit
in the sequence. So each step varies the layout, never the content: a random run of prompt
words before the system text (0..``MAX_PREFIX``, text before the image, as prompts differ) and
a random offset added to every position id (0..``MAX_OFFSET``). Inference uses the plain
prompt at offset 0. Inputs are never pruned in training (the real models never were).

Further options, all measured in the README (its testbed section):
``--grow-from DIR`` starts from a trained tiny_gcg and appends identity-initialised decoder
layers (same width) to reach ``--layers`` (none at its own depth: a second training stage),
then trains on the full scene distribution.
``--short-caption P`` trains a share P of the steps on a second task, "Describe the image ."
answered by the phrases alone ("small red circle , large blue star ."), language loss only:
its first word needs the image at the last prompt token, which GCG's fixed opening
("The image shows a") never asks for. ``--object-question P`` trains a share P on a third, a
question about one object named by colour and shape ("Describe the red circle . ASSISTANT :"),
answered by its phrase ("small red circle ."): its first word needs the last prompt token to
find that object, as a VQA question does in a real model's training data. ``--layer-drop R``
skips decoder layer l for a step with probability R * l / (L - 1) (LayerDrop with stochastic
depth's linear rule; nothing is rescaled): the answer has to be ready without the deep layers,
as a pretrained LLM's answer largely is by mid-depth; it acts on whole layers, never on tokens.
``--lora-rank R`` adapts the LLM as GLaMM adapts LLaVA-1.5's (``scripts/lora.py``): rank-R
adapters on q_proj / v_proj, the decoder layers and the projector frozen, the adapters merged
into the saved weights.

Deterministic for a seed: the scenes of step s are fixed by (seed, s) and the layout draw by a
generator seeded with (seed, s). ``--resume`` continues from ``DIR/checkpoint.pt`` (weights,
optimizer, schedule, step) and ends with the same weights as an uninterrupted run; a
checkpoint is written every ``--checkpoint-minutes`` and at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from altp.data.synthetic import COLOURS, SHAPES, SIZES, render_scene, scene_seed  # noqa: E402
from altp.models.tiny_gcg import (  # noqa: E402
    INSTRUCTION,
    SYSTEM_TEXT,
    TinyGCG,
    TinyGCGConfig,
    load_tiny_gcg,
)
from scripts.lora import LoRA, freeze_for_lora  # noqa: E402

# Curriculum over the objects per scene (fraction of training done -> max objects): first find
# one or two objects, then order many. Evaluation scenes have 1..6 objects; the last stage trains
# on exactly that distribution.
CURRICULUM = ((0.15, 2), (0.35, 4), (1.0, 6))
MAX_PREFIX = 24  # extra prompt words before the system text
MAX_OFFSET = 256  # added to every position id
ARCHITECTURE = ("layers", "hidden", "heads", "intermediate")  # --layers ... -> TinyGCGConfig
INHERITED_REQUIRED = ("vision.", "mask_head.")
INHERITED_IF_SAME_SHAPE = ("projector.", "llm.model.embed_tokens.", "llm.lm_head.")
ATTRIBUTES = (list(SIZES), sorted(COLOURS), list(SHAPES))  # the three words of every phrase
# The second task (--short-caption): the objects' phrases alone, so the answer's first word is
# the first object's size. Its words are all in INSTRUCTION: the vocabulary does not change.
SHORT_INSTRUCTION = "Describe the image . ASSISTANT :"
assert set(SHORT_INSTRUCTION.split()) <= set(INSTRUCTION.split())
# The third task (--object-question): "Describe the <colour> <shape> ." -> "<size> <colour> <shape> .".
QUESTION_INSTRUCTION = "Describe the {colour} {shape} . ASSISTANT :"
RESUME_MUST_MATCH = ("steps", "batch", "lr", "seed", "perception_from", "grow_from", "precision", "query_readout",
                     "short_caption", "object_question", "layer_drop", "lora_rank",
                     *ARCHITECTURE)


def curriculum_scene(seed: int, index: int, progress: float, image_size: int):
    max_objects = next((n for until, n in CURRICULUM if progress < until), CURRICULUM[-1][1])
    return render_scene(scene_seed(seed, "train", index), image_size, 1, max_objects)


def layout(model: TinyGCG, seed: int, step: int, batch: int) -> tuple[list[int], torch.Tensor]:
    """This step's extra words before the system text (one draw per batch, so it stays
    rectangular) and per-sample position offsets."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    words = model.tokenizer.encode(f"{SYSTEM_TEXT} {INSTRUCTION}")
    n_prefix = int(torch.randint(0, MAX_PREFIX + 1, (), generator=generator))
    prefix = [words[int(i)] for i in torch.randint(0, len(words), (n_prefix,), generator=generator)]
    return prefix, torch.randint(0, MAX_OFFSET + 1, (batch, 1), generator=generator)


def step_task(seed: int, step: int, short_share: float, question_share: float = 0.0) -> str:
    """What step ``step`` trains: "short" (caption), "question" or "gcg", a fixed draw per
    (seed, step); with no question share the draws are those of the short-caption-only runs."""
    draw = float(torch.rand((), generator=torch.Generator().manual_seed(seed * 7_919 + step)))
    return "short" if draw < short_share else "question" if draw < short_share + question_share else "gcg"


def dropped_layers(seed: int, step: int, n_layers: int, top_rate: float) -> list[int]:
    """LayerDrop with stochastic depth's linear rule (--layer-drop): layer i (0-based) is
    skipped for this step's whole batch with probability top_rate * i / (n_layers - 1), so
    layer 0 always runs and the last is skipped at top_rate; a fixed draw per (seed, step)."""
    if top_rate <= 0:
        return []
    draws = torch.rand(n_layers, generator=torch.Generator().manual_seed(seed * 104_729 + step))
    return [i for i in range(1, n_layers) if draws[i] < top_rate * i / (n_layers - 1)]


@contextmanager
def skipping(model: TinyGCG, dropped: list[int]):
    """Run the LLM without the decoder layers in ``dropped`` (their residual branch is zero)."""
    layers = model.llm.model.layers
    if dropped:
        model.llm.model.layers = torch.nn.ModuleList(layer for i, layer in enumerate(layers) if i not in dropped)
    try:
        yield
    finally:
        model.llm.model.layers = layers


def short_answer(phrases: list[str]) -> str:
    """The short caption: "small red circle , large blue star and small green triangle ."."""
    listed = phrases[0] if len(phrases) == 1 else f"{' , '.join(phrases[:-1])} and {phrases[-1]}"
    return f"{listed} ."


def object_question(phrases: list[str], seed: int, step: int, index: int) -> tuple[str, str]:
    """The question about one object named by colour and shape, and its answer (the phrase).
    The object is drawn among those whose colour and shape no other object shares (phrases are
    unique per scene, colour + shape nearly always: where none is, the first object is asked
    about and the answer's size is a guess)."""
    pairs = [phrase.split()[1:] for phrase in phrases]
    unique = [i for i, pair in enumerate(pairs) if pairs.count(pair) == 1] or [0]
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + index)
    chosen = unique[int(torch.randint(0, len(unique), (), generator=generator))]
    colour, shape = pairs[chosen]
    return QUESTION_INSTRUCTION.format(colour=colour, shape=shape), f"{phrases[chosen]} ."


def language_task(task: str, samples, seed: int, step: int) -> tuple[str | list[str], list[str]]:
    """The instruction(s) and answers of a "short" or "question" step."""
    if task == "short":
        return SHORT_INSTRUCTION, [short_answer(s.phrases) for s in samples]
    asked = [object_question(s.phrases, seed, step, i) for i, s in enumerate(samples)]
    return [question for question, _ in asked], [answer for _, answer in asked]


class QueryReadout(torch.nn.Module):
    """Training-only: the size, colour and shape of each [SEG]'s phrase, read linearly out of
    its mask query (the text_hidden_fcs output the mask head receives). Without it the deep
    model's queries carried the size alone (a linear probe read colour and shape at chance)
    and every mask covered all objects of that size: a saddle where neither the query nor
    the head's keys gain colour or shape, since neither uses them yet. The words are in the
    text right before [SEG], so the cheapest way to satisfy the readout is to copy them
    from the phrase: it asks what the query holds, not where in the image to look."""

    def __init__(self, dim: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(words)) for words in ATTRIBUTES)

    def loss(self, queries: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(F.cross_entropy(head(queries).float(), labels[:, row])
                   for row, head in enumerate(self.heads)) / len(self.heads)


def make_batch(model: TinyGCG, samples, device: torch.device):
    """Pixels, right-padded answer ids (+EOS), the GT masks of every [SEG] in order and the
    size / colour / shape classes of their phrases [n_seg, 3]."""
    tok = model.tokenizer
    answers = [tok.encode(s.answer) + [tok.eos_id] for s in samples]
    ids = torch.full((len(samples), max(map(len, answers))), tok.pad_id)
    for b, answer in enumerate(answers):
        ids[b, :len(answer)] = torch.tensor(answer)
    masks = torch.from_numpy(np.concatenate([s.masks for s in samples])).float()
    words = torch.tensor([[classes.index(word) for classes, word in zip(ATTRIBUTES, phrase.split())]
                          for s in samples for phrase in s.phrases])
    return model.pixels([s.image for s in samples]).to(device), ids.to(device), masks.to(device), words.to(device)


def answer_states(model: TinyGCG, pixels, answer_ids, prefix, offsets, instruction: str | list[str] = INSTRUCTION):
    """Teacher-forced final-norm hidden states of the positions that produce each answer token
    (the states the engine's greedy decoding computes) and the encoder output. ``instruction``:
    one for the batch, or one per sample (all of one length in words)."""
    with torch.no_grad():  # frozen perception
        encoded = model.vision(pixels)
    if isinstance(instruction, str):
        embeds, _, _ = model.embed_prompt(pixels, answer_ids, encoded=encoded, prefix=prefix, instruction=instruction)
    else:
        embeds = torch.cat([model.embed_prompt(pixels[b:b + 1], answer_ids[b:b + 1],
                                               encoded=tuple(part[b:b + 1] for part in encoded), prefix=prefix,
                                               instruction=text)[0] for b, text in enumerate(instruction)])
    positions = torch.arange(embeds.shape[1], device=embeds.device)[None] + offsets.to(embeds.device)
    hidden = model.llm.model(inputs_embeds=embeds, position_ids=positions).last_hidden_state
    prompt_len = embeds.shape[1] - answer_ids.shape[1]
    return hidden[:, prompt_len - 1:-1], encoded  # position i produces answer token i


def loss_terms(model: TinyGCG, readout: QueryReadout, pixels, answer_ids, gt_masks, words, prefix, offsets):
    """Answer cross entropy, mask BCE, mask Dice and the query readout's cross entropy."""
    producing, encoded = answer_states(model, pixels, answer_ids, prefix, offsets)
    target = answer_ids.masked_fill(answer_ids == model.tokenizer.pad_id, -100)
    lm_loss = F.cross_entropy(model.llm.lm_head(producing).flatten(0, 1), target.flatten(), ignore_index=-100)

    sample, step = (answer_ids == model.tokenizer.seg_id).nonzero(as_tuple=True)
    seg_states = producing[sample, step]
    pred = model.mask_logits(seg_states, encoded, sample).float()
    bce = F.binary_cross_entropy_with_logits(pred, gt_masks)
    prob, target_masks = pred.sigmoid().flatten(1), gt_masks.flatten(1)
    dice = 1 - (2 * (prob * target_masks).sum(1) + 1) / (prob.sum(1) + target_masks.sum(1) + 1)
    return lm_loss, bce, dice.mean(), readout.loss(model.text_hidden_fcs(seg_states), words)


def language_loss(model: TinyGCG, samples, device, prefix, offsets, instructions: str | list[str],
                  answers: list[str]) -> torch.Tensor:
    """Cross entropy of a language-only task's answers (the short caption, the object question:
    no [SEG], no mask)."""
    tok = model.tokenizer
    answers = [tok.encode(answer) + [tok.eos_id] for answer in answers]
    ids = torch.full((len(samples), max(map(len, answers))), tok.pad_id)
    for b, answer in enumerate(answers):
        ids[b, :len(answer)] = torch.tensor(answer)
    ids = ids.to(device)
    producing, _ = answer_states(model, model.pixels([s.image for s in samples]).to(device), ids, prefix, offsets,
                                 instructions)
    target = ids.masked_fill(ids == tok.pad_id, -100)
    return F.cross_entropy(model.llm.lm_head(producing).flatten(0, 1), target.flatten(), ignore_index=-100)


def build_model(args) -> TinyGCG:
    """A model of the requested LLM size: the vision encoder (frozen) and the mask head from
    ``--perception-from``; also its projector, token embeddings and LM head where the width
    matches (no decoder layer is taken, so none carries the earlier model's attention); fresh
    decoder layers, final norm and text_hidden_fcs."""
    source = json.loads((args.perception_from / "config.json").read_text())
    shape = {name: getattr(args, name) for name in ARCHITECTURE}
    model = TinyGCG(TinyGCGConfig(**{**source, **shape}))
    weights = load_file(str(args.perception_from / "model.safetensors"))
    ours = model.state_dict()
    required = [k for k in ours if k.startswith(INHERITED_REQUIRED)]
    if any(k not in weights for k in required):
        raise SystemExit(f"--perception-from {args.perception_from}: lacks {[k for k in required if k not in weights][:5]}")
    taken = {k: v for k, v in weights.items() if k.startswith(INHERITED_REQUIRED + INHERITED_IF_SAME_SHAPE)
             and k in ours and ours[k].shape == v.shape}
    model.load_state_dict(taken, strict=False)
    model.vision.requires_grad_(False)
    return model


def grow_model(args) -> TinyGCG:
    """``--layers`` decoder layers whose first ones, and everything else, are the complete model
    in ``--grow-from``; the added layers go on top with their residual outputs (o_proj,
    down_proj) zero, so training starts from exactly the source model's function."""
    source = load_tiny_gcg(args.grow_from)
    if any(getattr(source.cfg, name) != getattr(args, name) for name in ARCHITECTURE[1:]):
        raise SystemExit(f"--grow-from {args.grow_from}: its width {[getattr(source.cfg, n) for n in ARCHITECTURE[1:]]} "
                         f"differs from --hidden/--heads/--intermediate {[getattr(args, n) for n in ARCHITECTURE[1:]]}")
    if source.cfg.layers > args.layers:
        raise SystemExit(f"--grow-from {args.grow_from}: has {source.cfg.layers} layers, more than --layers {args.layers}")
    model = TinyGCG(replace(source.cfg, layers=args.layers))
    model.load_state_dict(source.state_dict(), strict=False)  # layers 0..n-1 and every other module
    for layer in model.llm.model.layers[source.cfg.layers:]:
        torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
        torch.nn.init.zeros_(layer.mlp.down_proj.weight)
    model.vision.requires_grad_(False)
    return model


def save_checkpoint(path: Path, model, readout, lora, optimizer, schedule, step: int, args, elapsed: float) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "readout": readout.state_dict(),
                "lora": lora.state_dict() if lora else {}, "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "step": step, "elapsed_s": elapsed,
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--perception-from", type=Path,
                       help="weights folder whose vision encoder (frozen) and mask head start this model")
    start.add_argument("--grow-from", type=Path,
                       help="complete weights folder with at most --layers layers: this model is it (plus identity "
                            "layers on top), trained on the full scene distribution (no curriculum)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (minutes on a GPU, hours on 2 CPU cores)")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=384)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16: autocast the forward (fp32 master weights and optimizer); ~25 %% faster on "
                             "an AVX512-BF16 CPU, the usual choice on a GPU. On a CPU without it (AVX2 only) "
                             "bf16 is emulated, ~10x slower: use fp32 there")
    parser.add_argument("--query-readout", type=float, default=1.0,
                        help="weight of the training-only readout of each [SEG] query's phrase words (0: none)")
    parser.add_argument("--short-caption", type=float, default=0.25,
                        help="share of steps that train the second task, a short caption of the phrases alone "
                             "(SHORT_INSTRUCTION), whose first word needs the image (0: GCG only)")
    parser.add_argument("--object-question", type=float, default=0.0,
                        help="share of steps that train a question about one object named by colour and shape "
                             "(QUESTION_INSTRUCTION), answered by its phrase (0: none)")
    parser.add_argument("--layer-drop", type=float, default=0.0,
                        help="LayerDrop rate of the last decoder layer, falling linearly to 0 at layer 0 "
                             "(stochastic depth's rule; 0: every layer runs every step)")
    parser.add_argument("--lora-rank", type=int, default=0,
                        help="adapt the LLM with rank-R LoRA on q_proj / v_proj, its layers and the projector "
                             "frozen, as GLaMM adapts LLaVA-1.5 (r 8, alpha 2r; 0: train it whole)")
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) after this step count")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = (grow_model(args) if args.grow_from else build_model(args)).to(device).train()
    readout = QueryReadout(model.cfg.mask_dim).to(device)
    lora = LoRA(model, args.lora_rank) if args.lora_rank else None
    if lora:
        freeze_for_lora(model)
    trained = [p for p in model.parameters() if p.requires_grad] + list(readout.parameters())
    trained += list(lora.parameters()) if lora else []
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 20)

    def lr_factor(step):  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    checkpoint_path, first, elapsed = args.out / "checkpoint.pt", 0, 0.0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        state = torch.load(checkpoint_path, weights_only=True, map_location=device)
        for name in RESUME_MUST_MATCH:
            saved, now = state["args"].get(name, parser.get_default(name)), getattr(args, name)
            if str(saved) != str(now):
                raise SystemExit(f"--resume: {checkpoint_path} was made with --{name.replace('_', '-')} {saved}, "
                                 f"not {now}")
        model.load_state_dict(state["model"])
        readout.load_state_dict(state["readout"])
        if lora:
            lora.load_state_dict(state["lora"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        first, elapsed = state["step"], state["elapsed_s"]
        print(f"resumed at step {first} from {checkpoint_path}", flush=True)
    elif checkpoint_path.exists():
        raise SystemExit(f"{checkpoint_path} exists: pass --resume to continue it, or choose another --out")

    last = min(args.steps, args.stop_after or args.steps)
    start, saved_at = time.time() - elapsed, time.time()
    for step in range(first, last):
        progress = 1.0 if args.grow_from else step / args.steps
        samples = [curriculum_scene(args.seed, step * args.batch + i, progress, model.cfg.image_size)
                   for i in range(args.batch)]
        task = step_task(args.seed, step, args.short_caption, args.object_question)
        dropped = dropped_layers(args.seed, step, model.cfg.layers, args.layer_drop)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"), \
                skipping(model, dropped):
            if task == "gcg":
                lm_loss, bce, dice, words = loss_terms(model, readout, *make_batch(model, samples, device),
                                                       *layout(model, args.seed, step, args.batch))
            else:
                lm_loss = language_loss(model, samples, device, *layout(model, args.seed, step, args.batch),
                                        *language_task(task, samples, args.seed, step))
                bce = dice = words = torch.zeros((), device=device)
        optimizer.zero_grad(set_to_none=True)
        (lm_loss + bce + dice + args.query_readout * words).backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step == last - 1:
            print(f"step {step:5d}{'' if task == 'gcg' else ' ' + task}  lm {lm_loss.item():.4f}  bce {bce.item():.4f}  dice {dice.item():.4f}  "
                  f"words {words.item():.4f}  {time.time() - start:7.1f}s", flush=True)
        if time.time() - saved_at > 60 * args.checkpoint_minutes or step == last - 1:
            save_checkpoint(checkpoint_path, model, readout, lora, optimizer, schedule, step + 1, args,
                            time.time() - start)
            (lora.merged(model) if lora else model).eval().save(args.out, card(args, model, time.time() - start, step + 1))
            model.train()
            saved_at = time.time()
    print(json.dumps(card(args, model, time.time() - start, last)))


def card(args, model, seconds: float, steps_done: int) -> dict:
    """The model card saved beside the weights (evaluation scores are added by the runner's user)."""
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                     if v is not None and k not in ("resume", "stop_after", "threads", "checkpoint_minutes", "device"))
    return {"command": f"python scripts/train_tiny_gcg.py {flags}", "curriculum_max_objects": CURRICULUM,
            "layout": {"max_prefix_words": MAX_PREFIX, "max_position_offset": MAX_OFFSET},
            "steps_done": steps_done, "training_minutes": round(seconds / 60, 1), "threads": args.threads,
            "parameters": sum(p.numel() for p in model.parameters()),
            "trained_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}


if __name__ == "__main__":
    main()
