"""Train tiny_gcg on the synthetic training stream, unpruned (as GLaMM is trained).

    python scripts/train_tiny_gcg.py --steps 1500 --out altp/models/weights

Loss = next-token cross entropy on the answer ("The image shows a <p> small red circle </p>
[SEG] ...", then </s>) + mask loss (BCE + Dice) for every [SEG], whose query is the final-norm
hidden state of the position that *produced* [SEG] — exactly what the engine hands the mask
head at inference — + a dense auxiliary loss on the vision encoder's tokens: each token
classifies the size, colour and shape of the object covering most of its patch (or
background). GLaMM starts from a pretrained CLIP; this auxiliary head plays that role for an
encoder trained from scratch (without it the LLM sat at the image-blind caption entropy for
hundreds of steps). The head is training-only and not shipped. The same holds for the
LLM: trained from scratch, its answer positions kept attending uniformly to all 576 visual
tokens, where a small object is a few tokens, and the captions stayed image-blind. So the
positions that produce an object's size, colour, shape and [SEG] are also taught where that
object is: in one layer (``ATTENTION_LAYER``), their head-averaged attention mass on the
object's tokens is pushed up (-log mass), as supervised attention does for alignment. It only
shapes training; inference is the plain model. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from altp.data.synthetic import COLOURS, SHAPES, SIZES, VOCAB, render_scene, scene_seed  # noqa: E402
from altp.models.tiny_gcg import WEIGHTS_DIR, TinyGCG, TinyGCGConfig  # noqa: E402

ATTRIBUTES = (list(SIZES), sorted(COLOURS), list(SHAPES))  # class 0 of each = background
# Curriculum over the objects per scene (fraction of training done -> max objects): a model
# from scratch first learns to find one or two objects, then to order many. Evaluation scenes
# have 1..6 objects; the last stage trains on exactly that distribution.
CURRICULUM = ((0.15, 2), (0.35, 4), (1.0, 6))
ATTENTION_LAYER = 2  # the LLM layer whose attention is supervised (0-based; FastV ranks with layer 1)
OBJECT_COVER = 0.2  # a token belongs to an object covering at least this share of its patch


def curriculum_scene(seed: int, index: int, progress: float, image_size: int):
    max_objects = next(n for until, n in CURRICULUM if progress < until)
    return render_scene(scene_seed(seed, "train", index), image_size, 1, max_objects)


def token_labels(sample, grid: int) -> torch.Tensor:
    """[3, grid*grid] size/colour/shape class of the object covering most of each token's patch."""
    n, height, width = sample.masks.shape
    cover = sample.masks.reshape(n, grid, height // grid, grid, width // grid).mean(axis=(2, 4))
    owner = cover.argmax(0).reshape(-1)
    present = cover.max(0).reshape(-1) > 0.5
    labels = torch.zeros(3, grid * grid, dtype=torch.long)
    for obj, phrase in enumerate(sample.phrases):
        for row, (words, word) in enumerate(zip(ATTRIBUTES, phrase.split())):
            labels[row, torch.from_numpy((owner == obj) & present)] = words.index(word) + 1
    return labels


class TokenAttributeHead(torch.nn.Module):
    """Training-only: per-token size/colour/shape logits from the vision encoder's tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(words) + 1) for words in ATTRIBUTES)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(F.cross_entropy(head(tokens).flatten(0, 1), labels[:, row].flatten())
                   for row, head in enumerate(self.heads)) / len(self.heads)


def attention_targets(model: TinyGCG, samples, answers: list[list[int]]):
    """(sample, answer index, object) for every answer token naming an object, each object's
    token membership [n_objects, grid*grid] (patch covered >= OBJECT_COVER, else its best cell)
    and its size/colour/shape classes [n_objects, 3]."""
    tok, grid = model.tokenizer, model.cfg.grid
    open_id = tok.ids["<p>"]
    rows, members, attributes = [], [], []
    for b, (sample, answer) in enumerate(zip(samples, answers)):
        n, height, width = sample.masks.shape
        cover = sample.masks.reshape(n, grid, height // grid, grid, width // grid).mean(axis=(2, 4))
        cover = torch.from_numpy(cover.reshape(n, -1))
        for k, start in enumerate(i for i, t in enumerate(answer) if t == open_id):
            obj = len(members)
            members.append((cover[k] >= OBJECT_COVER) | (cover[k] == cover[k].max()))
            attributes.append([words.index(word) + 1 for words, word in zip(ATTRIBUTES, sample.phrases[k].split())])
            # size, colour, shape and [SEG] (after "</p>") are the object's own tokens
            rows += [(b, start + offset, obj) for offset in (1, 2, 3, 5)]
    return torch.tensor(rows), torch.stack(members), torch.tensor(attributes)


def make_batch(model: TinyGCG, samples):
    """Pixels, right-padded answer ids (+EOS), GT masks of every [SEG] in order, token labels,
    and the attention targets."""
    tok = model.tokenizer
    answers = [tok.encode(s.answer) + [tok.eos_id] for s in samples]
    width = max(map(len, answers))
    ids = torch.full((len(samples), width), tok.pad_id)
    for b, answer in enumerate(answers):
        ids[b, :len(answer)] = torch.tensor(answer)
    masks = torch.from_numpy(np.concatenate([s.masks for s in samples])).float()
    labels = torch.stack([token_labels(s, model.cfg.grid) for s in samples])
    return model.pixels([s.image for s in samples]), ids, masks, labels, attention_targets(model, samples, answers)


def attention_losses(model: TinyGCG, readout: TokenAttributeHead, layer_input, position_embeddings,
                     visual_start: int, prompt_len: int, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """For every object-naming position in ``ATTENTION_LAYER``: -log of its head-averaged
    attention mass on the object's tokens, and the object's size/colour/shape read out of that
    layer's attention output (so the values carry what the caption needs, not only where)."""
    rows, members, attributes = targets
    layer = model.llm.model.layers[ATTENTION_LAYER]
    attn = layer.self_attn
    batch, length, _ = layer_input.shape
    x = layer.input_layernorm(layer_input)
    query = attn.q_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    key = attn.k_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    value = attn.v_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
    key, value = repeat_kv(key, attn.num_key_value_groups), repeat_kv(value, attn.num_key_value_groups)
    sample, position = rows[:, 0], prompt_len - 1 + rows[:, 1]  # the position producing that token
    scores = torch.einsum("nhd,nhtd->nht", query[sample, :, position], key[sample]) * attn.scaling
    future = torch.arange(length)[None, :] > position[:, None]
    probs = scores.masked_fill(future[:, None], float("-inf")).softmax(-1)
    visual = probs.mean(1)[:, visual_start:visual_start + members.shape[1]]
    mass = (visual * members[rows[:, 2]]).sum(-1)
    output = attn.o_proj(torch.einsum("nht,nhtd->nhd", probs, value[sample]).flatten(1))
    return -torch.log(mass + 1e-6).mean(), readout.loss(output[:, None], attributes[rows[:, 2]][:, :, None])


def loss_terms(model: TinyGCG, aux: TokenAttributeHead, readout: TokenAttributeHead, pixels, answer_ids,
               gt_masks, labels, targets):
    encoded = model.vision(pixels)
    embeds, visual_start, _ = model.embed_prompt(pixels, answer_ids, encoded=encoded)
    captured = {}

    def capture(_module, args, kwargs):
        captured["input"] = args[0] if args else kwargs["hidden_states"]
        captured["rope"] = kwargs["position_embeddings"]

    hook = model.llm.model.layers[ATTENTION_LAYER].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        hidden = model.llm.model(inputs_embeds=embeds).last_hidden_state  # final norm applied
    finally:
        hook.remove()
    prompt_len = embeds.shape[1] - answer_ids.shape[1]
    producing = hidden[:, prompt_len - 1:-1]  # position i produces answer token i
    logits = model.llm.lm_head(producing)
    target = answer_ids.masked_fill(answer_ids == model.tokenizer.pad_id, -100)
    lm_loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)

    sample, step = (answer_ids == model.tokenizer.seg_id).nonzero(as_tuple=True)
    pred = model.mask_logits(producing[sample, step], encoded, sample)
    bce = F.binary_cross_entropy_with_logits(pred, gt_masks)
    prob = pred.sigmoid().flatten(1)
    target_masks = gt_masks.flatten(1)
    dice = 1 - (2 * (prob * target_masks).sum(1) + 1) / (prob.sum(1) + target_masks.sum(1) + 1)
    attention, read = attention_losses(model, readout, captured["input"], captured["rope"], visual_start,
                                       prompt_len, targets)
    return lm_loss, bce, dice.mean(), aux.loss(encoded[0], labels), attention, read


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--save-every", type=int, default=250, help="also save every N steps (resumable look)")
    parser.add_argument("--init", type=Path, default=None, help="start from these weights instead of random")
    parser.add_argument("--start-progress", type=float, default=0.0,
                        help="curriculum position of step 0 (a continuation with --init: 0.35 = the last stage)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = (init_from(args.init) if args.init else TinyGCG(TinyGCGConfig(vocab=list(VOCAB)))).train()
    aux = TokenAttributeHead(model.cfg.token_dim)
    readout = TokenAttributeHead(model.cfg.hidden)
    optimizer = torch.optim.AdamW([*model.parameters(), *aux.parameters(), *readout.parameters()], lr=args.lr,
                                  weight_decay=0.01)
    warmup = max(1, args.steps // 20)

    def schedule(step):  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start = time.time()
    for step in range(args.steps):
        progress = args.start_progress + (1 - args.start_progress) * step / args.steps
        samples = [curriculum_scene(args.seed, step * args.batch + i, progress, model.cfg.image_size)
                   for i in range(args.batch)]
        batch = make_batch(model, samples)
        lm_loss, bce, dice, token_loss, attention, read = loss_terms(model, aux, readout, *batch)
        loss = lm_loss + bce + dice + token_loss + 0.5 * attention + read
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  lm {lm_loss.item():.4f}  bce {bce.item():.4f}  dice {dice.item():.4f}  "
                  f"tokens {token_loss.item():.4f}  attention {attention.item():.3f}  read {read.item():.3f}  "
                  f"{time.time() - start:7.1f}s", flush=True)
        if args.save_every and step and step % args.save_every == 0:
            model.eval().save(args.out, card(args, argv, model, start, step))
            model.train()
    final = card(args, argv, model, start, args.steps)
    model.eval().save(args.out, final)
    print(json.dumps(final))


def init_from(directory: Path) -> TinyGCG:
    """Weights of an earlier run; parameters it did not have yet (a module added since) keep
    their fresh initialisation and are listed."""
    model = TinyGCG(TinyGCGConfig(**json.loads((directory / "config.json").read_text())))
    missing, unexpected = model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=False)
    if unexpected:
        raise SystemExit(f"--init {directory}: unknown parameters {unexpected[:5]}")
    if missing:
        print(f"--init {directory}: new parameters start fresh: {', '.join(missing)}", flush=True)
    return model


def card(args, argv, model, start, steps_done) -> dict:
    """The model card saved beside the weights (evaluation scores are added by the runner's user)."""
    return {"command": "python scripts/train_tiny_gcg.py " + " ".join(argv or sys.argv[1:]),
            "curriculum_max_objects": CURRICULUM,
            "seed": args.seed, "steps": steps_done, "batch": args.batch, "lr": args.lr,
            "training_minutes": round((time.time() - start) / 60, 1), "threads": args.threads,
            "parameters": sum(p.numel() for p in model.parameters())}


if __name__ == "__main__":
    main()
