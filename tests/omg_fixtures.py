"""A tiny OMG-LLaVA folder in the released layout (altp/models/omg_llava/loading.py):

    internlm2-chat-7b/        config.json (InternLM2 field names), 2 safetensors shards + index,
                              tokenizer.model (sentencepiece) + tokenizer_config.json
    omg_seg_convl.pth         {'state_dict': backbone.* (ConvNeXt, ``layer{n}`` naming),
                              panoptic_head.pixel_decoder.*, panoptic_head.* (+ an unused iou_embed)}
    convnext_large_d_320_CocoPanopticOVDataset.pth   unit-norm [classes, prototypes, dim]
    finetuned_gcg.pth         flat: llm.base_model.model.* (resized embeddings, output as peft's
                              ``base_layer``, LoRA ``.default`` on every linear and the head),
                              projector.model.*, projector_text2vision.model.*, and (gcg_decoder)
                              visual_encoder.panoptic_head.{transformer_decoder_llm,mask_embed_llm}.*

Sizes: ConvNeXt dims (8, 16, 32, 64), pixel decoder / head 32 channels (8 heads, as loading.py
fixes), 12 queries, InternLM2 hidden 64, 4 layers, 4 heads over 2 KV heads. With
``model.image_size=256`` the stride-32 map is 8 x 8, pixel-shuffled to a 4 x 4 grid.

The LLM is random but scripted like tests/glamm_fixtures.py: the prompt's last piece and the
answer tokens get large orthonormal embeddings, and each answer token's ``output`` row points at
its predecessor's embedding, so greedy decoding after any GCG question walks ``ANSWER``:
``a <p> red circle </p> [SEG] . <|im_end|>`` (the small random layers, LoRA and visual tokens
cannot change the argmax). Every run therefore has one phrase and one [SEG] mask.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from altp.data.synthetic import VOCAB
from altp.models.omg_llava import convnext, mask2former, pixel_decoder
from altp.models.omg_llava.internlm2 import PTH_PREFIX
from altp.models.omg_llava.prompt import GCG_QUESTIONS, IM_END

LLM = {"hidden": 64, "layers": 4, "heads": 4, "kv_heads": 2, "ffn": 128, "rank": 4}
DIMS, DEPTHS = (8, 16, 32, 64), (1, 1, 1, 1)
FEAT, QUERIES, HEAD_LAYERS, FFN, CLASSES, PROTOTYPES, CLS_DIM = 32, 12, 3, 64, 5, 2, 16
PROJ_FEAT = 48  # Naive_Proj's query_proj width
PIXEL_DIM = 4 * DIMS[-1] + 2 * FEAT  # pixel-shuffled stride-32 map ‖ perception prior
IMAGE_SIZE = 256
LLM_DIR = "internlm2-chat-7b"
SEG_FILE, CLASS_FILE, GCG_FILE = ("omg_seg_convl.pth", "convnext_large_d_320_CocoPanopticOVDataset.pth",
                                  "finetuned_gcg.pth")
ANSWER_PIECES = ("▁a", "<p>", "▁red", "▁circle", "</p>", "[SEG]", ".", IM_END)
ADDED = ("[SEG]", "<p>", "</p>", "<region>")  # after the sentencepiece pieces, in this order


def _train_tokenizer(folder: Path) -> int:
    """tokenizer.model (BPE over the GCG questions and the synthetic captions' words, with
    <|im_end|> = 3 and <|im_start|> = 4 as single pieces) and tokenizer_config.json. Returns the
    piece count."""
    import sentencepiece as spm

    text = [*GCG_QUESTIONS * 3, *["user assistant"] * 5, *[" ".join(VOCAB)] * 5,
            *["The image shows a red circle, a blue square and a small green star."] * 5]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=200,
                                   model_type="bpe", hard_vocab_limit=False, character_coverage=1.0,
                                   user_defined_symbols=[IM_END, "<|im_start|>"], bos_id=1, eos_id=2,
                                   unk_id=0, pad_id=-1, minloglevel=2, num_threads=1)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    entry = {"special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
    config = {"tokenizer_class": "InternLM2Tokenizer", "add_bos_token": True, "add_eos_token": False,
              "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
              "added_tokens_decoder": {"3": {"content": IM_END, **entry},
                                       "4": {"content": "<|im_start|>", **entry}},
              "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


def chain_ids(folder: Path) -> list[int]:
    """[last prompt id, *answer ids] for the tokenizer in ``folder`` (ids as the loader gives them)."""
    from altp.models.omg_llava.prompt import add_special_tokens, build_prompt_ids, load_tokenizer

    tokenizer = load_tokenizer(folder)
    add_special_tokens(tokenizer)
    answer = [tokenizer.convert_tokens_to_ids(piece) for piece in ANSWER_PIECES]
    assert tokenizer.unk_token_id not in answer, answer
    return [build_prompt_ids(tokenizer)[-1], *answer]


def _write_llm(folder: Path, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The base InternLM2 folder (its own 'pieces'-row embeddings, which the loader ignores)."""
    pieces = _train_tokenizer(folder)
    d, ffn, heads, kv = LLM["hidden"], LLM["ffn"], LLM["heads"], LLM["kv_heads"]
    head_dim = d // heads

    def rand(*shape, std=0.02):
        return torch.randn(*shape, generator=gen) * std

    tensors = {"model.tok_embeddings.weight": rand(pieces, d), "output.weight": rand(pieces, d),
               "model.norm.weight": 1 + rand(d, std=0.1)}
    for i in range(LLM["layers"]):
        p = f"model.layers.{i}."
        tensors.update({p + "attention.wqkv.weight": rand((heads + 2 * kv) * head_dim, d),
                        p + "attention.wo.weight": rand(d, heads * head_dim),
                        p + "feed_forward.w1.weight": rand(ffn, d), p + "feed_forward.w3.weight": rand(ffn, d),
                        p + "feed_forward.w2.weight": rand(d, ffn),
                        p + "attention_norm.weight": 1 + rand(d, std=0.1),
                        p + "ffn_norm.weight": 1 + rand(d, std=0.1)})
    tensors = {k: v.to(torch.bfloat16) for k, v in tensors.items()}  # released dtype
    config = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "bias": False,
              "hidden_size": d, "num_hidden_layers": LLM["layers"], "num_attention_heads": heads,
              "num_key_value_heads": kv, "intermediate_size": ffn, "rms_norm_eps": 1e-5,
              "rope_theta": 1000000, "vocab_size": pieces, "max_position_embeddings": 32768,
              "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
              "rope_scaling": {"type": "dynamic", "factor": 2.0}, "torch_dtype": "bfloat16",
              "tie_word_embeddings": False, "attn_implementation": "eager",
              "auto_map": {"AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, names in shards.items():
        save_file({k: tensors[k].contiguous() for k in names}, str(folder / name), metadata={"format": "pt"})
    size = sum(v.numel() * v.element_size() for v in tensors.values())
    index = {"metadata": {"total_size": size}, "weight_map": {k: n for n, names in shards.items() for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return tensors


def _llm_pth(folder: Path, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The .pth's llm.* tensors (peft names): resized, scripted embeddings/head and LoRA."""
    chain = chain_ids(folder)
    pieces = json.loads((folder / "config.json").read_text())["vocab_size"]
    rows, d, r = pieces + len(ADDED), LLM["hidden"], LLM["rank"]
    heads, kv, ffn = LLM["heads"], LLM["kv_heads"], LLM["ffn"]
    embed, output = torch.randn(rows, d, generator=gen) * 0.02, torch.randn(rows, d, generator=gen) * 0.02
    basis = torch.linalg.qr(torch.randn(d, len(chain), generator=gen))[0].T * math.sqrt(d)
    for k, token in enumerate(chain):
        embed[token] = basis[k]
        if k:
            output[token] = basis[k - 1]
    state = {"model.tok_embeddings.weight": embed, "output.base_layer.weight": output}
    shapes = {"attention.wqkv": ((heads + 2 * kv) * (d // heads), d), "attention.wo": (d, d),
              "feed_forward.w1": (ffn, d), "feed_forward.w3": (ffn, d), "feed_forward.w2": (d, ffn)}
    stems = {f"model.layers.{i}.{m}": s for i in range(LLM["layers"]) for m, s in shapes.items()}
    stems["output"] = (rows, d)
    for stem, (out_dim, in_dim) in stems.items():
        state[f"{stem}.lora_A.default.weight"] = torch.randn(r, in_dim, generator=gen) * 0.05
        state[f"{stem}.lora_B.default.weight"] = torch.randn(out_dim, r, generator=gen) * 0.05
    return {PTH_PREFIX + k: v.to(torch.bfloat16) for k, v in state.items()}


def _perturb(module: torch.nn.Module, gen: torch.Generator, std: float = 0.1) -> None:
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping shows up
        for name, p in module.named_parameters():
            if name.endswith("gamma"):  # ConvNeXt layer scale 1e-6 would hide the blocks
                p.uniform_(0.5, 1.0, generator=gen)
            else:
                p.add_(torch.randn(p.shape, generator=gen) * std)


def tiny_perception(seed: int = 0, gcg_decoder: bool = True):
    """The tiny ConvNeXt, pixel decoder and head (random, perturbed) and the class embeddings."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    backbone = convnext.ConvNeXt(DIMS, DEPTHS).eval()
    decoder = pixel_decoder.MSDeformAttnPixelDecoder(
        in_channels=DIMS, feat_channels=FEAT, out_channels=FEAT, num_layers=2, num_heads=8, num_points=4,
        ffn_channels=FFN, num_groups=32).eval()
    head = mask2former.OMGMask2FormerHead(feat_channels=FEAT, out_channels=FEAT, num_queries=QUERIES,
                                          num_layers=HEAD_LAYERS, num_heads=8, ffn_channels=FFN,
                                          num_classes=CLASSES, cls_embed_dim=CLS_DIM,
                                          llm_decoder=gcg_decoder).eval()
    for module in (backbone, decoder, head):
        _perturb(module, gen)
    with torch.no_grad():
        for layer in decoder.encoder.layers:  # spread the deformable offsets over a few pixels
            layer.self_attn.sampling_offsets.bias.normal_(0, 1.0, generator=gen)
        head.query_feat.weight.mul_(10)  # distinct queries: several win grid cells (K > 1)
        head.query_embed.weight.mul_(10)
    embed = F.normalize(torch.randn(CLASSES, PROTOTYPES, CLS_DIM, generator=gen), dim=-1)
    return backbone, decoder, head, embed


def make_tiny_omg_llava(root: Path, seed: int = 0, gcg_decoder: bool = True) -> Path:
    """Write the four released parts into ``root`` (created) and return it; see the docstring."""
    root = Path(root)
    (root / LLM_DIR).mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    _write_llm(root / LLM_DIR, gen)
    backbone, decoder, head, embed = tiny_perception(seed, gcg_decoder)
    head_state = mask2former.released_state_dict(head)
    seg = {**convnext.released_state_dict(backbone), **pixel_decoder.released_state_dict(decoder),
           **{k: v for k, v in head_state.items()
              if not k[len(mask2former.PREFIX):].startswith(mask2former.LLM_PARTS)},
           "panoptic_head.iou_embed.weight": torch.randn(1, FEAT, generator=gen)}  # no inference role
    torch.save({"meta": {"mmdet_version": "3.0.0"}, "state_dict": seg}, root / SEG_FILE)
    torch.save(embed, root / CLASS_FILE)

    gcg = _llm_pth(root / LLM_DIR, gen)
    d = LLM["hidden"]

    def linear(name: str, n_in: int, n_out: int) -> None:
        gcg[f"{name}.weight"] = torch.randn(n_out, n_in, generator=gen) / math.sqrt(n_in)
        gcg[f"{name}.bias"] = torch.randn(n_out, generator=gen) * 0.1

    linear("projector.model.query_proj", 2 * FEAT, PROJ_FEAT)
    linear("projector.model.model.0", PROJ_FEAT, d)
    linear("projector.model.model.2", d, d)
    linear("projector.model.model_feat.0", PIXEL_DIM, d)
    linear("projector.model.model_feat.2", d, d)
    gcg["projector.model.seperate_embed.weight"] = torch.randn(1, d, generator=gen)
    linear("projector_text2vision.model.0", d, 2 * FEAT)
    linear("projector_text2vision.model.2", 2 * FEAT, 2 * FEAT)
    if gcg_decoder:  # the GCG fine-tune's [SEG] decoder copies
        gcg.update({mask2former.LLM_PREFIX + k[len(mask2former.PREFIX):]: v for k, v in head_state.items()
                    if k[len(mask2former.PREFIX):].startswith(mask2former.LLM_PARTS)})
    torch.save(gcg, root / GCG_FILE)
    return root


def loader_kwargs(root: Path, **extra) -> dict:
    """``load_omg_llava`` arguments for a folder written by ``make_tiny_omg_llava``."""
    return {"llm_dir": str(root / LLM_DIR), "seg_weights": str(root / SEG_FILE),
            "class_embeddings": str(root / CLASS_FILE), "checkpoint": str(root / GCG_FILE),
            "dtype": "float32", "device": "cpu", "image_size": IMAGE_SIZE, **extra}
