"""OMG-Seg perception, pixel side: ConvNeXt trunk, deformable attention, pixel decoder, key maps.

Everything runs on tiny random modules (a few thousand parameters) in well under a second each.
"""

from __future__ import annotations

import math

import pytest
import torch

from altp.models.errors import CheckpointError
from altp.models.omg_llava import convnext, pixel_decoder
from altp.models.omg_llava.convnext import ConvNeXt, infer_convnext_config
from altp.models.omg_llava.pixel_decoder import (
    MSDeformAttnPixelDecoder,
    MultiScaleDeformableAttention,
    grid_reference_points,
    infer_pixel_decoder_config,
    ms_deform_attn,
    sine_position_encoding,
)

DIMS, DEPTHS = (8, 16, 24, 32), (1, 1, 2, 1)
DECODER = dict(in_channels=DIMS, feat_channels=32, out_channels=16, num_layers=2, num_heads=4,
               num_points=2, ffn_channels=48, num_groups=4)


def tiny_convnext(seed: int = 0) -> ConvNeXt:
    torch.manual_seed(seed)
    model = ConvNeXt(DIMS, DEPTHS).eval()
    with torch.no_grad():  # layer scale 1e-6 would hide the blocks; make them count
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.0)
    return model


def tiny_decoder(seed: int = 0) -> MSDeformAttnPixelDecoder:
    torch.manual_seed(seed)
    model = MSDeformAttnPixelDecoder(**DECODER).eval()
    with torch.no_grad():  # nn.Linear init keeps offsets small; spread them over a few pixels
        for layer in model.encoder.layers:
            layer.self_attn.sampling_offsets.bias.normal_(0, 1.0)
    return model


def slow_deform_attn(value, shapes, locations, weights):
    """Per-point bilinear interpolation (align_corners=False, zeros outside), summed by weight."""
    bs, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(bs, queries, heads, dim, dtype=torch.float64)
    for b in range(bs):
        for q in range(queries):
            for m in range(heads):
                for lvl, (h, w) in enumerate(shapes):
                    grid = value[b, starts[lvl]:starts[lvl + 1], m].double().view(h, w, dim)
                    for p in range(points):
                        x = locations[b, q, m, lvl, p, 0].item() * w - 0.5
                        y = locations[b, q, m, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(dim, dtype=torch.float64)
                        for yi, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
                            for xi, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                                if 0 <= yi < h and 0 <= xi < w:
                                    sample += wy * wx * grid[yi, xi]
                        out[b, q, m] += weights[b, q, m, lvl, p].item() * sample
    return out.view(bs, queries, heads * dim)


def test_ms_deform_attn_matches_explicit_bilinear_loop():
    torch.manual_seed(0)
    shapes = [(3, 4), (2, 5)]
    bs, heads, dim, queries, points = 2, 2, 3, 5, 3
    value = torch.randn(bs, sum(h * w for h, w in shapes), heads, dim)
    # some points fall outside [0, 1]: they must read zeros, as grid_sample(padding="zeros")
    locations = torch.rand(bs, queries, heads, len(shapes), points, 2) * 1.4 - 0.2
    weights = torch.rand(bs, queries, heads, len(shapes), points)
    fast = ms_deform_attn(value, torch.tensor(shapes), locations, weights)
    slow = slow_deform_attn(value, shapes, locations, weights)
    assert fast.shape == (bs, queries, heads * dim)
    torch.testing.assert_close(fast.double(), slow, atol=1e-5, rtol=0)


def test_deformable_attention_module_matches_explicit_composition():
    """mmcv's module: offsets / (W, H) of each level, softmax over levels x points per head,
    value without the position, output_proj, + identity -- against the slow sampler."""
    torch.manual_seed(1)
    shapes, dim, heads, points = [(2, 5), (3, 2)], 8, 2, 3
    attn = MultiScaleDeformableAttention(dim, num_heads=heads, num_levels=2, num_points=points)
    n = sum(h * w for h, w in shapes)
    x, pos = torch.randn(1, n, dim), torch.randn(1, n, dim)
    ref = torch.rand(1, n, 2, 2)
    out = attn(x, pos, ref, torch.tensor(shapes))
    offsets = attn.sampling_offsets(x + pos).view(1, n, heads, 2, points, 2)
    scale = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
    locations = ref[:, :, None, :, None, :] + offsets / scale[None, None, None, :, None, :]
    weights = attn.attention_weights(x + pos).view(1, n, heads, 2 * points).softmax(-1)
    value = attn.value_proj(x).view(1, n, heads, dim // heads)
    sampled = slow_deform_attn(value, shapes, locations, weights.view(1, n, heads, 2, points))
    expected = attn.output_proj(sampled.float()) + x
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_block_and_encoder_layer_follow_upstream_order():
    """timm ConvNeXtBlock: x + gamma * fc2(gelu(fc1(LN(dwconv(x))))); mmdet encoder layer
    (post-norm): LN1(h + FFN(h)) with h = LN0(attention(x) incl. its residual)."""
    block = tiny_convnext().stages[1].blocks[0]
    x = torch.randn(1, 16, 5, 4)
    y = block.norm(block.conv_dw(x).permute(0, 2, 3, 1))
    y = block.mlp.fc2(torch.nn.functional.gelu(block.mlp.fc1(y))).permute(0, 3, 1, 2)
    torch.testing.assert_close(block(x), x + y * block.gamma.view(1, -1, 1, 1))
    layer = tiny_decoder().encoder.layers[0]
    x, pos, ref = torch.randn(1, 6, 32), torch.randn(1, 6, 32), torch.rand(1, 6, 3, 2)
    shapes = torch.tensor([[1, 2], [1, 2], [1, 2]])
    h = layer.norms[0](layer.self_attn(x, pos, ref, shapes))
    ffn = layer.ffn.layers[1](torch.relu(layer.ffn.layers[0][0](h)))
    torch.testing.assert_close(layer(x, pos, ref, shapes), layer.norms[1](h + ffn))


def test_reference_points_sample_pixel_centres():
    """Zero offsets at the decoder's reference points read each pixel's own value exactly, so
    the attention reduces to output_proj(value_proj(x)) + x."""
    h, w, dim = 3, 5, 8
    attn = MultiScaleDeformableAttention(dim, num_heads=2, num_levels=1, num_points=2)
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.zero_()
    x, pos = torch.randn(1, h * w, dim), torch.randn(1, h * w, dim)
    ref = grid_reference_points(h, w, stride=8, device="cpu")
    assert torch.allclose(ref[1], torch.tensor([1.5 / w, 0.5 / h]))  # x runs fastest
    out = attn(x, pos, ref[None, :, None], torch.tensor([[h, w]]))
    torch.testing.assert_close(out, attn.output_proj(attn.value_proj(x)) + x)


def test_sine_position_encoding_layout():
    pos = sine_position_encoding(1, 3, 4, num_feats=8, device="cpu")
    assert pos.shape == (1, 16, 3, 4)
    y, x = 2 / (3 + 1e-6) * 2 * math.pi, 3 / (4 + 1e-6) * 2 * math.pi  # row 1, column 2
    # channels: y (sin, cos pairs over the frequencies) first, then x
    assert pos[0, 0, 1, 2].item() == pytest.approx(math.sin(y), abs=1e-6)
    assert pos[0, 1, 1, 2].item() == pytest.approx(math.cos(y), abs=1e-6)
    assert pos[0, 8, 1, 2].item() == pytest.approx(math.sin(x), abs=1e-6)
    assert pos[0, 11, 1, 2].item() == pytest.approx(math.cos(x / 10000 ** (2 / 8)), abs=1e-6)


def test_convnext_stage_shapes_and_config_inference():
    model = tiny_convnext()
    feats = model(torch.randn(2, 3, 64, 48))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 12), (2, 16, 8, 6), (2, 24, 4, 3),
                                               (2, 32, 2, 1)]
    for layout in (convnext.OMG_SEG_PREFIX, convnext.OPEN_CLIP_PREFIX):
        released = convnext.released_state_dict(model, layout)
        config = infer_convnext_config(released, layout)
        assert config == {"dims": DIMS, "depths": DEPTHS, "in_chans": 3, "patch_size": 4}
    large = ConvNeXt(convnext.LARGE_DIMS, convnext.LARGE_DEPTHS, patch_size=4)
    # shape inference on convnext_large's real key set (stage 0 has no downsample, as timm)
    names = {k: v for k, v in large.state_dict().items()}
    assert "stages.0.downsample.0.weight" not in names and "stages.1.downsample.1.weight" in names
    assert infer_convnext_config(names)["depths"] == (3, 3, 27, 3)
    assert sum(v.numel() for v in names.values()) == pytest.approx(196.2e6, rel=0.01)


def test_convnext_released_round_trip_both_layouts():
    model, pixels = tiny_convnext(0), torch.randn(1, 3, 32, 32)
    omg = convnext.released_state_dict(model)
    assert "backbone.layer1.blocks.0.conv_dw.weight" in omg and "backbone.stem.0.weight" in omg
    clip = convnext.released_state_dict(model, convnext.OPEN_CLIP_PREFIX)
    assert "visual.trunk.stages.3.downsample.1.weight" in clip
    # unused neighbours in real files (norm_pre, CLIP head) are ignored
    omg["backbone.head.1.proj.weight"] = torch.zeros(2, 2)
    clip["visual.head.mlp.fc1.weight"] = torch.zeros(2, 2)
    assert not torch.equal(tiny_convnext(1)(pixels)[-1], model(pixels)[-1])
    for tensors, prefix in ((omg, convnext.OMG_SEG_PREFIX), (clip, convnext.OPEN_CLIP_PREFIX)):
        fresh = convnext.build_released(tensors, prefix)
        for a, b in zip(fresh(pixels), model(pixels)):
            assert torch.equal(a, b)


def test_pixel_decoder_shapes_and_level_order():
    decoder = tiny_decoder()
    sizes = [(16, 24), (8, 12), (4, 6), (2, 3)]  # a 64 x 96 image at strides 4, 8, 16, 32
    feats = [torch.randn(2, c, h, w) for c, (h, w) in zip(DIMS, sizes)]
    mask_features, memories = decoder(feats)
    assert mask_features.shape == (2, 16, 16, 24)
    # low -> high resolution: stride 32, 16, 8 (what the Mask2Former decoder cycles through)
    assert [tuple(m.shape) for m in memories] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    # input_convs[0] reads the stride-32 map (its in_channels are the last backbone width)
    assert decoder.input_convs[0].conv.in_channels == DIMS[3]
    assert decoder.lateral_convs[0].conv.in_channels == DIMS[0]
    assert decoder.lateral_convs[0].conv.bias is None and decoder.input_convs[0].conv.bias is not None
    # the stride-32 memory mixes all levels through deformable attention: it moves with feats[1]
    moved = [f.clone() for f in feats]
    moved[1] += 1.0
    assert not torch.allclose(decoder(moved)[1][0], memories[0])


def test_pixel_decoder_released_round_trip():
    decoder = tiny_decoder(0)
    feats = [torch.randn(1, c, 16 // s, 16 // s) for c, s in zip(DIMS, (1, 2, 4, 8))]
    released = pixel_decoder.released_state_dict(decoder)
    for key in ("panoptic_head.pixel_decoder.input_convs.2.gn.weight",
                "panoptic_head.pixel_decoder.encoder.layers.1.self_attn.sampling_offsets.weight",
                "panoptic_head.pixel_decoder.encoder.layers.0.ffn.layers.0.0.weight",
                "panoptic_head.pixel_decoder.encoder.layers.0.ffn.layers.1.bias",
                "panoptic_head.pixel_decoder.encoder.layers.0.norms.1.weight",
                "panoptic_head.pixel_decoder.level_encoding.weight",
                "panoptic_head.pixel_decoder.lateral_convs.0.conv.weight",
                "panoptic_head.pixel_decoder.output_convs.0.gn.bias",
                "panoptic_head.pixel_decoder.mask_feature.weight"):
        assert key in released, key
    assert "panoptic_head.pixel_decoder.lateral_convs.0.conv.bias" not in released
    released["panoptic_head.pixel_decoder_llm.mask_feature.weight"] = torch.zeros(1)  # other module
    config = infer_pixel_decoder_config(released, num_points=DECODER["num_points"])
    assert config == {k: v for k, v in DECODER.items() if k != "num_groups"} | {"num_levels": 3}
    fresh = MSDeformAttnPixelDecoder(**config, num_groups=4).eval()
    before = fresh(feats)[0]
    pixel_decoder.load_released(fresh, released)
    mask_a, mem_a = decoder(feats)
    mask_b, mem_b = fresh(feats)
    assert not torch.equal(before, mask_a)
    assert torch.equal(mask_a, mask_b) and all(torch.equal(a, b) for a, b in zip(mem_a, mem_b))


@pytest.mark.parametrize("which", ["pixel_decoder", "convnext"])
def test_missing_key_and_wrong_shape_are_one_line_errors(which):
    if which == "pixel_decoder":
        module, mod = tiny_decoder(), pixel_decoder
        key = "panoptic_head.pixel_decoder.encoder.layers.1.norms.0.weight"
    else:
        module, mod = tiny_convnext(), convnext
        key = "backbone.layer3.blocks.1.mlp.fc2.bias"
    tensors = mod.released_state_dict(module)
    missing = {k: v for k, v in tensors.items() if k != key}
    with pytest.raises(CheckpointError) as err:
        mod.load_released(module, missing, source="omg_seg_convl.pth")
    message = str(err.value)
    assert "\n" not in message and "1 missing" in message and key in message
    assert "omg_seg_convl.pth" in message
    wrong = dict(tensors)
    wrong[key] = torch.zeros(wrong[key].shape[0] + 1)
    with pytest.raises(CheckpointError) as err:
        mod.load_released(module, wrong)
    message = str(err.value)
    assert "\n" not in message and "shape mismatch" in message and key in message
    assert "missing" not in message
