"""The SAM components on their own: shapes, interfaces other code relies on, transforms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from engine.sam.common import MLP, LayerNorm2d
from engine.sam.mask_decoder import MaskDecoder
from engine.sam.prompt_encoder import PromptEncoder
from engine.sam.sam import build_mobile_sam
from engine.sam.tiny_vit import ConvBN, TinyViT, relative_offset_index
from engine.sam.transformer import TwoWayTransformer
from engine.transforms import ResizeLongestSide


@pytest.fixture(scope="module")
def decoder() -> MaskDecoder:
    torch.manual_seed(0)
    return MaskDecoder(
        transformer_dim=256,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048),
    ).eval()


def _first_appearance_index(window: int) -> torch.Tensor:
    """The bias-table numbering spelled out: offsets numbered in order of first appearance."""
    points = list(itertools.product(range(window), range(window)))
    table: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(table.setdefault(offset, len(table)))
    return torch.tensor(idxs).view(len(points), len(points))


@pytest.mark.parametrize("window", [1, 2, 7, 14])
def test_relative_offset_index_matches_first_appearance_order(window: int) -> None:
    assert torch.equal(relative_offset_index(window), _first_appearance_index(window))


def test_mobile_sam_layout() -> None:
    sam = build_mobile_sam()
    encoder = sam.image_encoder
    assert encoder.img_size == 1024
    assert encoder.embedding_size == (64, 64)
    assert encoder.early_size == (64, 64)
    assert [layer.dim for layer in encoder.layers] == [64, 128, 160, 320]
    assert [len(layer.blocks) for layer in encoder.layers] == [2, 2, 6, 2]
    assert [tuple(layer.input_resolution) for layer in encoder.layers] == [
        (256, 256),
        (128, 128),
        (64, 64),
        (64, 64),
    ]
    assert encoder.layers[3].downsample is None
    # attention biases and their (non-persistent) index buffers per stage
    attn = encoder.layers[2].blocks[0].attn
    assert tuple(attn.attention_biases.shape) == (5, 196)
    assert tuple(attn.attention_bias_idxs.shape) == (196, 196)
    state = sam.state_dict()
    assert not any("attention_bias_idxs" in k or "pixel_" in k for k in state)
    assert not any(k.startswith(("image_encoder.head.", "image_encoder.norm_head.")) for k in state)
    assert sam.image_format == "RGB" and sam.mask_threshold == 0.0


def test_encoder_outputs_embedding_and_early_feature() -> None:
    torch.manual_seed(0)
    encoder = build_mobile_sam().image_encoder.eval()
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        embedding, early = encoder.forward_with_early(x)
        again = encoder(x)
    assert tuple(embedding.shape) == (1, 256, 64, 64)
    assert tuple(early.shape) == (1, 160, 64, 64)
    torch.testing.assert_close(again, embedding)


def test_encoder_is_configurable_for_a_256_px_input() -> None:
    # the LiteMedSAM layout: 256-px input, 1x1 stride-1 stem convs
    torch.manual_seed(0)
    encoder = TinyViT(img_size=256, patch_embed_kernel=1, patch_embed_stride=1).eval()
    assert encoder.embedding_size == (64, 64)
    with torch.no_grad():
        embedding, early = encoder.forward_with_early(torch.randn(1, 3, 256, 256))
    assert tuple(embedding.shape) == (1, 256, 64, 64)
    assert tuple(early.shape) == (1, 160, 64, 64)


def test_encoder_rejects_wrong_input_size() -> None:
    encoder = TinyViT(img_size=256, patch_embed_kernel=1, patch_embed_stride=1)
    with pytest.raises(ValueError, match=r"\(B, 3, 256, 256\)"):
        encoder(torch.zeros(1, 3, 224, 224))


def test_encoder_rejects_inconsistent_stage_lists() -> None:
    with pytest.raises(ValueError, match="one entry per stage"):
        TinyViT(depths=(2, 2, 6))


def test_prompt_encoder_tokens() -> None:
    torch.manual_seed(0)
    pe = PromptEncoder(256, (64, 64), (1024, 1024), 16)
    points = torch.tensor([[[10.0, 20.0], [500.0, 600.0]]])
    labels = torch.tensor([[1, 0]])
    box = torch.tensor([[10.0, 20.0, 300.0, 400.0]])

    sparse, dense = pe(points=(points, labels), boxes=None, masks=None)
    assert tuple(sparse.shape) == (1, 3, 256)  # two points + one padding point
    assert tuple(dense.shape) == (1, 256, 64, 64)
    # the padding token is exactly the not-a-point embedding
    torch.testing.assert_close(sparse[0, 2], pe.not_a_point_embed.weight[0])
    # a positive and a negative point at the same place differ by the two kind embeddings
    both = pe(
        points=(points[:, :1].repeat(1, 2, 1), torch.tensor([[1, 0]])), boxes=None, masks=None
    )
    kinds = pe.point_embeddings[1].weight[0] - pe.point_embeddings[0].weight[0]
    torch.testing.assert_close(both[0][0, 0] - both[0][0, 1], kinds)

    sparse, _ = pe(points=(points, labels), boxes=box, masks=None)
    assert tuple(sparse.shape) == (1, 4, 256)  # no padding point when there is a box
    sparse, _ = pe(points=None, boxes=box, masks=None)
    assert tuple(sparse.shape) == (1, 2, 256)
    _, dense = pe(points=None, boxes=None, masks=torch.zeros(3, 1, 256, 256))
    assert tuple(dense.shape) == (3, 256, 64, 64)
    assert tuple(pe.get_dense_pe().shape) == (1, 256, 64, 64)


def test_decoder_forward_selects_masks(decoder: MaskDecoder) -> None:
    emb = torch.randn(1, 256, 64, 64)
    pe = torch.randn(1, 256, 64, 64)
    sparse = torch.randn(3, 2, 256)
    dense = torch.randn(3, 256, 64, 64)
    with torch.no_grad():
        multi, iou_multi = decoder(emb, pe, sparse, dense, multimask_output=True)
        single, iou_single = decoder(emb, pe, sparse, dense, multimask_output=False)
        everything, iou_all, extra, upscaled = decoder.predict_masks(emb, pe, sparse, dense)
    assert tuple(multi.shape) == (3, 3, 256, 256) and tuple(iou_multi.shape) == (3, 3)
    assert tuple(single.shape) == (3, 1, 256, 256) and tuple(iou_single.shape) == (3, 1)
    assert extra is None
    assert tuple(upscaled.shape) == (3, 32, 256, 256)
    torch.testing.assert_close(everything[:, 1:], multi)
    torch.testing.assert_close(everything[:, :1], single)
    torch.testing.assert_close(iou_all[:, 1:], iou_multi)


def test_decoder_extra_tokens(decoder: MaskDecoder) -> None:
    emb = torch.randn(2, 256, 64, 64)
    pe = torch.randn(1, 256, 64, 64)
    sparse = torch.randn(2, 3, 256)
    dense = torch.randn(2, 256, 64, 64)
    extra_tokens = torch.randn(2, 256)
    with torch.no_grad():
        masks, iou, extra_out, upscaled = decoder.predict_masks(
            emb, pe, sparse, dense, extra_tokens=extra_tokens
        )
    assert tuple(masks.shape) == (2, 4, 256, 256)
    assert tuple(iou.shape) == (2, 4)
    assert extra_out is not None and tuple(extra_out.shape) == (2, 2, 256)
    assert tuple(upscaled.shape) == (2, 32, 256, 256)
    # the extra tokens take part in the attention, so they change SAM's own outputs
    with torch.no_grad():
        plain, _, _, _ = decoder.predict_masks(emb, pe, sparse, dense)
    assert not torch.allclose(plain, masks)
    with pytest.raises(ValueError, match="extra_tokens"):
        decoder.predict_masks(emb, pe, sparse, dense, extra_tokens=torch.randn(2, 128))
    with pytest.raises(ValueError, match="batch"):
        decoder.predict_masks(torch.randn(3, 256, 64, 64), pe, sparse, dense)


def test_common_blocks() -> None:
    mlp = MLP(256, 64, 32, 3, sigmoid_output=True)
    out = mlp(torch.randn(5, 256))
    assert tuple(out.shape) == (5, 32)
    assert bool(((out > 0) & (out < 1)).all())
    norm = LayerNorm2d(8)
    y = norm(torch.randn(2, 8, 4, 4) * 5 + 3)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 4, 4), atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        MLP(4, 4, 4, 0)


def test_resize_longest_side_shapes_and_coordinates() -> None:
    t = ResizeLongestSide(1024)
    assert t.get_preprocess_shape(640, 1000, 1024) == (655, 1024)
    assert t.get_preprocess_shape(1024, 768, 1024) == (1024, 768)
    assert t.get_preprocess_shape(3, 2, 1024) == (1024, 683)
    image = np.random.default_rng(0).integers(0, 256, (640, 1000, 3), dtype=np.uint8)
    resized = t.apply_image(image)
    assert resized.shape == (655, 1024, 3) and resized.dtype == np.uint8
    # no resampling when the longest side already fits
    same = np.zeros((1024, 768, 3), np.uint8)
    assert t.apply_image(same).shape == (1024, 768, 3)

    coords = np.array([[[1000.0, 640.0], [0.0, 0.0]]])
    out = t.apply_coords(coords, (640, 1000))
    np.testing.assert_allclose(out[0, 0], [1024.0, 655.0])
    boxes = np.array([[100, 200, 500, 600]])
    np.testing.assert_allclose(
        t.apply_boxes(boxes, (640, 1000)),
        [[100 * 1.024, 200 * 655 / 640, 500 * 1.024, 600 * 655 / 640]],
    )
    torch.testing.assert_close(
        t.apply_boxes_torch(torch.tensor(boxes), (640, 1000)),
        torch.tensor(t.apply_boxes(boxes, (640, 1000)), dtype=torch.float32),
    )
    batch = torch.rand(1, 3, 640, 1000)
    assert tuple(t.apply_image_torch(batch).shape) == (1, 3, 655, 1024)
    with pytest.raises(ValueError, match="uint8"):
        t.apply_image(image.astype(np.float32))


def test_conv_bn_folding_matches_conv_then_batchnorm() -> None:
    torch.manual_seed(0)
    layer = ConvBN(8, 16, kernel_size=3, stride=2, padding=1, groups=8)
    with torch.no_grad():
        layer.bn.running_mean.uniform_(-1, 1)
        layer.bn.running_var.uniform_(0.5, 2)
        layer.bn.weight.uniform_(0.5, 1.5)
        layer.bn.bias.uniform_(-1, 1)
    layer.eval()
    x = torch.randn(2, 8, 15, 15)
    with torch.no_grad():
        expected = layer.bn(layer.c(x))
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
