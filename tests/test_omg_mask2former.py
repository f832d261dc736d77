"""OMG-Seg Mask2Former head: perception prior, pixel shuffle, key mapping, [SEG] decoding."""

import math

import pytest
import torch
import torch.nn.functional as F

from altp.models.errors import CheckpointError
from altp.models.omg_llava.mask2former import (
    OMGMask2FormerHead,
    cross_attention_mask,
    infer_config,
    load_released,
    perception_prior,
    pixel_shuffle,
    released_state_dict,
    sine_position_3d,
)

C, HEADS, QUERIES, LAYERS, CLASSES, CLS_DIM = 32, 4, 6, 3, 5, 16


def tiny_head(seed=0, llm_decoder=False):
    torch.manual_seed(seed)
    head = OMGMask2FormerHead(feat_channels=C, out_channels=C, num_queries=QUERIES,
                              num_layers=LAYERS, num_heads=HEADS, ffn_channels=64,
                              num_classes=CLASSES, cls_embed_dim=CLS_DIM, llm_decoder=llm_decoder)
    with torch.no_grad():  # non-trivial norms/biases so a wrong mapping shows up
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    head.set_class_embed(F.normalize(torch.randn(CLASSES, 2, CLS_DIM), dim=-1))
    return head.eval()


def tiny_features(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask_features = torch.randn(batch, C, 16, 16, generator=g)
    memorys = [torch.randn(batch, C, s, s, generator=g) for s in (2, 4, 8)]  # stride 32, 16, 8
    return mask_features, memorys


def literal_prior(cls_logits, mask_logits, query_feat, query_pos, image_size, grid):
    """panoptic_postprocess as upstream writes it, full-size maps included."""
    score = F.softmax(cls_logits, dim=-1)[..., :-1].max(-1).values
    full = F.interpolate(mask_logits, size=(image_size, image_size), mode="bilinear",
                         align_corners=False).sigmoid()
    prob = (score[..., None, None] * 0.5 + 0.5) * full
    prob = F.interpolate(prob, size=(grid, grid), mode="bilinear", align_corners=False)
    ids = prob.argmax(1).flatten(1)
    feats = torch.cat([query_feat, query_pos], -1)
    pixel_query = prob.softmax(1).permute(0, 2, 3, 1) @ feats[:, None]
    mask = ids[:, None, :] != torch.arange(prob.shape[1])[None, :, None]
    return pixel_query.flatten(1, 2), mask, prob.flatten(2)


@pytest.mark.parametrize("mask_size,image_size,grid", [(16, 64, 4), (6, 20, 3), (8, 32, 8)])
def test_perception_prior_matches_literal_resize(mask_size, image_size, grid):
    g = torch.Generator().manual_seed(0)
    cls_logits = torch.randn(2, 5, 4, generator=g) * 3
    mask_logits = torch.randn(2, 5, mask_size, mask_size, generator=g) * 4
    qf, qp = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    pixel_query, attn_mask, valid = perception_prior(cls_logits, mask_logits, qf, qp,
                                                     image_size=image_size, grid=grid)
    ref_query, ref_mask, _ = literal_prior(cls_logits, mask_logits, qf, qp, image_size, grid)
    assert pixel_query.shape == (2, grid * grid, 6)
    torch.testing.assert_close(pixel_query, ref_query, rtol=1e-5, atol=1e-6)
    assert torch.equal(attn_mask, ref_mask)
    assert torch.equal(valid, ref_mask.sum(-1) < grid * grid)


def test_perception_prior_hand_values():
    # mask 2x2 -> image 4 -> grid 2: image rows are (r0, .75r0+.25r1, .25r0+.75r1, r1) and each
    # grid row averages image rows (0,1) / (2,3); likewise columns.
    ln3 = math.log(3)
    mask_logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]],        # q0: sigmoid 0.5 everywhere
                                [[ln3, ln3], [-ln3, -ln3]],      # q1: varies along y only
                                [[-20.0, -20.0], [-20.0, -20.0]]])[None]  # q2: never wins
    cls_logits = torch.tensor([[math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 5.0]])[None]
    qf, qp = torch.eye(3)[None], torch.zeros(1, 3, 1)
    pixel_query, attn_mask, valid = perception_prior(cls_logits, mask_logits, qf, qp,
                                                     image_size=4, grid=2)
    s3 = math.sqrt(3)
    p0 = 0.75 * 0.5                                  # score 0.5 -> weight 0.75
    p1_top = (2 / 3) * (0.75 + s3 / (1 + s3)) / 2    # score 1/3 -> weight 2/3
    p1_bottom = (2 / 3) * (1 / (1 + s3) + 0.25) / 2
    p2 = (0.5 * math.exp(0) / (2 + math.exp(5)) + 0.5) / (1 + math.exp(20))
    for cell, p1 in ((0, p1_top), (1, p1_top), (2, p1_bottom), (3, p1_bottom)):
        expect = torch.tensor([p0, p1, p2]).softmax(0)
        torch.testing.assert_close(pixel_query[0, cell, :3], expect.float(), rtol=1e-5, atol=1e-6)
    assert pixel_query[0, :, 3].abs().max() == 0  # query_pos channels (zeros) follow query_feat
    assert attn_mask[0].tolist() == [[True, True, False, False], [False, False, True, True],
                                     [True, True, True, True]]
    assert valid[0].tolist() == [True, True, False]


def test_pixel_shuffle_channel_order():
    x = torch.arange(32.0).reshape(1, 2, 4, 4)  # x[c, y, x] = 16c + 4y + x
    out = pixel_shuffle(x, 2)
    assert out.shape == (1, 4, 8)
    # channels (rh, rw, c): (0,0,0) (0,0,1) (0,1,0) (0,1,1) (1,0,0) ...; tokens row-major
    assert out[0, 0].tolist() == [0, 16, 1, 17, 4, 20, 5, 21]
    assert out[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]
    assert out[0, 2].tolist() == [8, 24, 9, 25, 12, 28, 13, 29]


def test_sine_position_hand_values():
    pos = sine_position_3d(1, 2, 2, num_feats=2)  # y, x embeds at (0, 0) are ~pi
    assert pos.shape == (1, 4, 4)
    z = 2 * math.pi / (1 + 1e-6)  # dim_t_z = (1, 1, 100, 100)
    expect = [math.sin(math.pi) + math.sin(z), -1 + math.cos(z),
              math.sin(math.pi) + math.sin(z / 100), -1 + math.cos(z / 100)]
    torch.testing.assert_close(pos[0, 0], torch.tensor(expect), atol=1e-5, rtol=0)


def test_round_trip_and_ignored_keys():
    head = tiny_head(llm_decoder=True)
    sd = released_state_dict(head)
    assert "panoptic_head.transformer_decoder.layers.0.cross_attn.attn.in_proj_weight" in sd
    assert "panoptic_head.transformer_decoder.layers.2.ffn.layers.0.0.weight" in sd
    assert "panoptic_head.transformer_decoder_llm.post_norm.weight" in sd
    assert "panoptic_head.mask_embed.4.bias" in sd
    sd["panoptic_head.iou_embed.4.weight"] = torch.zeros(1, C)
    sd["panoptic_head.pixel_decoder.mask_feature.weight"] = torch.zeros(C, C, 1, 1)
    sd["projector.model.0.weight"] = torch.zeros(1)  # other prefixes are not this head's business
    config = infer_config(sd, num_heads=HEADS, class_embed=torch.zeros(CLASSES, 2, CLS_DIM))
    assert config == dict(feat_channels=C, num_queries=QUERIES, num_layers=LAYERS, num_levels=3,
                          num_heads=HEADS, out_channels=C, ffn_channels=64, cls_embed_dim=CLS_DIM,
                          num_classes=CLASSES, input_proj=False, llm_decoder=True)
    other = OMGMask2FormerHead(**config).eval()
    ignored = load_released(other, sd)
    assert sorted(ignored) == ["panoptic_head.iou_embed.4.weight",
                               "panoptic_head.pixel_decoder.mask_feature.weight"]
    other.cls_embed = head.cls_embed.clone()
    mask_features, memorys = tiny_features()
    out, ref = other.predict(mask_features, memorys), head.predict(mask_features, memorys)
    assert out[0].shape == (2, QUERIES, CLASSES + 1) and out[1].shape == (2, QUERIES, 16, 16)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
    assert torch.all(out[0][..., -1] == 0)  # the zero background prototype
    assert out[0][..., :-1].abs().max() <= 100.01  # cosine x exp(4.6052)
    seg = torch.randn(3, 2 * C)
    assert torch.equal(other.segment_llm(seg, mask_features, memorys, [1, 0, 1]),
                       head.segment_llm(seg, mask_features, memorys, [1, 0, 1]))


def test_gcg_llm_copies_from_separate_file():
    head = tiny_head(llm_decoder=True)
    sd = released_state_dict(head)
    gcg = {"visual_encoder." + k: v for k, v in sd.items()
           if k.startswith(("panoptic_head.transformer_decoder_llm.", "panoptic_head.mask_embed_llm."))}
    omg = {k: v for k, v in sd.items() if "_llm." not in k}
    config = infer_config(omg, num_heads=HEADS, llm_tensors=gcg)
    assert config["llm_decoder"]
    other = OMGMask2FormerHead(**config)
    load_released(other, omg, llm_tensors=gcg)
    torch.testing.assert_close(other.mask_embed_llm[4].weight, head.mask_embed_llm[4].weight)


def test_missing_and_mismatched_keys_one_line():
    head = tiny_head()
    sd = released_state_dict(head)
    del sd["panoptic_head.query_embed.weight"]
    sd["panoptic_head.level_embed.weight"] = torch.zeros(4, C)
    sd["panoptic_head.transformer_decoder_llm.post_norm.weight"] = torch.ones(C)  # head has no _llm
    with pytest.raises(CheckpointError) as err:
        load_released(tiny_head(), sd, source="omg_seg_convl.pth")
    message = str(err.value)
    assert "\n" not in message and message.startswith("omg_seg_convl.pth: ")
    assert "1 missing: panoptic_head.query_embed.weight" in message
    assert "panoptic_head.level_embed.weight (4, 32)!=(3, 32)" in message
    assert "unexpected" not in message  # only a warning (test_unexpected_keys_only_warn)
    many = {k: v for k, v in sd.items() if "layers" not in k}
    with pytest.raises(CheckpointError, match=r"missing: .*\(\+\d+ more\)"):
        load_released(tiny_head(), many)
    with pytest.raises(CheckpointError, match="cannot infer"):
        infer_config({})


def test_unexpected_keys_only_warn(caplog):
    """Upstream loads with strict=False: an unknown panoptic_head.* key warns, the head loads."""
    head = tiny_head()
    sd = released_state_dict(head)
    sd["panoptic_head.transformer_decoder_llm.post_norm.weight"] = torch.ones(C)  # head has no _llm
    other = tiny_head()
    with caplog.at_level("WARNING"):
        load_released(other, sd, source="omg_seg_convl.pth")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "omg_seg_convl.pth: ignored 1 unexpected: panoptic_head.transformer_decoder_llm.post_norm.weight"]
    torch.testing.assert_close(other.query_embed.weight, head.query_embed.weight)


def test_segment_llm_uses_llm_copies_when_present():
    base = tiny_head()
    mask_features, memorys = tiny_features()
    seg = torch.randn(2, 2 * C)
    sd = released_state_dict(base)
    with_llm = OMGMask2FormerHead(**{**infer_config(sd, num_heads=HEADS), "llm_decoder": True})
    with_llm.eval()
    # init_new_decoder(): the _llm copies start as copies of the original decoder / mask MLP
    sd.update({k.replace("transformer_decoder.", "transformer_decoder_llm.")
               .replace("mask_embed.", "mask_embed_llm."): v for k, v in sd.items()
               if ".transformer_decoder." in k or ".mask_embed." in k})
    load_released(with_llm, sd)
    with_llm.cls_embed = base.cls_embed.clone()
    fallback = base.segment_llm(seg, mask_features, memorys, [0, 1])
    assert fallback.shape == (2, 16, 16)
    assert torch.equal(with_llm.segment_llm(seg, mask_features, memorys, [0, 1]), fallback)
    before = with_llm.predict(mask_features, memorys)
    with torch.no_grad():
        with_llm.transformer_decoder_llm.layers[1].ffn.layers[1].bias.add_(1.0)
    changed = with_llm.segment_llm(seg, mask_features, memorys, [0, 1])
    assert not torch.allclose(changed, fallback)
    for a, b in zip(with_llm.predict(mask_features, memorys), before):  # panoptic path untouched
        assert torch.equal(a, b)
    with torch.no_grad():
        with_llm.mask_embed_llm[4].bias.add_(1.0)
    assert not torch.allclose(with_llm.segment_llm(seg, mask_features, memorys, [0, 1]), changed)


def test_attention_mask_fallback():
    logits = torch.full((1, 2, 4, 4), -5.0)
    logits[0, 1, :2] = 5.0  # query 1 sees the top half; query 0 sees nothing
    mask = cross_attention_mask(logits, (2, 2), num_heads=3)
    assert mask.shape == (3, 2, 4)
    assert not mask[:, 0].any()  # all masked -> attend everywhere
    assert mask[:, 1].tolist() == [[False, False, True, True]] * 3
    # end to end: a head whose every mask is negative still gives finite outputs
    head = tiny_head()
    with torch.no_grad():
        head.mask_embed[4].weight.zero_()
        head.mask_embed[4].bias.fill_(-1.0)
    mask_features, memorys = tiny_features()
    cls_logits, mask_logits, query_feat, _ = head.predict(mask_features.abs() + 0.1, memorys)
    assert (mask_logits < 0).all() and torch.isfinite(query_feat).all()
    assert torch.isfinite(cls_logits).all()
