"""SAM's and WSI-SAM's mask decoders for many prompts on one field, with the shared work shared.

Segment-everything decodes hundreds of point prompts on one field. The generic decoders
(:meth:`engine.wsi_sam.WsiSam.decode_sam` / :meth:`~engine.wsi_sam.WsiSam.decode_hr`) treat each
prompt as its own image: the embedding is copied per prompt, and every attention projects all
4096 image tokens of every prompt. Here the same function is computed with the algebra
rearranged, equal within float rounding:

- the first layer's image-side projections (keys and values of the token-to-image attention,
  queries of the image-to-token attention) depend only on the field: computed once per batch;
- in the later attentions the few prompt tokens are folded into the projection weights instead
  of projecting the 4096 image tokens (``(X W_k^T) q = X (W_k^T q)``), and the image-to-token
  output goes straight from the attention weights to the 256 channels (``A (V W_o^T)``);
- the 4x upscaling runs as per-pixel matrix products on channels-last rows
  (:mod:`engine.sam.pixelwise`), and SAM's masks are read in that layout;
- WSI-SAM's merged token is folded into the last fusion convolution (one output channel instead
  of 32) and applied to the field's static features by one matrix product.

Only the three multimask outputs are computed (what segment-everything uses).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from engine.backends import BackendError
from engine.sam.common import LayerNorm2d
from engine.sam.mask_decoder import MaskDecoder
from engine.sam.transformer import Attention, TwoWayAttentionBlock
from engine.wsi_sam import PatchFeatures, Prompts, WsiSam

__all__ = ["FieldDecoder", "decode_points", "runtime_field_decoders"]

logger = logging.getLogger(__name__)


def _heads(attn: Attention) -> tuple[int, int]:
    return attn.num_heads, attn.internal_dim // attn.num_heads


def _token_attention(
    attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``attn`` among the prompt tokens (queries, keys and values all (B, T, D)): small."""
    heads, width = _heads(attn)
    b, t, _ = q.shape
    qp = attn.q_proj(q).view(b, t, heads, width).transpose(1, 2)
    kp = attn.k_proj(k).view(b, k.shape[1], heads, width).transpose(1, 2)
    vp = attn.v_proj(v).view(b, v.shape[1], heads, width).transpose(1, 2)
    weights = torch.softmax(qp @ kp.transpose(-1, -2) / math.sqrt(width), dim=-1)
    out = (weights @ vp).transpose(1, 2).reshape(b, t, heads * width)
    return attn.out_proj(out)


def _tokens_to_shared_image(
    attn: Attention, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Tokens (B, T, D) attend to an image shared by the batch (keys, values (1, N, D))."""
    heads, width = _heads(attn)
    b, t, _ = q.shape
    n = keys.shape[1]
    qp = attn.q_proj(q).view(b, t, heads, width).transpose(1, 2)  # (B, h, T, w)
    kp = attn.k_proj(keys).view(1, n, heads, width).permute(0, 2, 3, 1)  # (1, h, w, N)
    vp = attn.v_proj(values).view(1, n, heads, width).transpose(1, 2)  # (1, h, N, w)
    weights = torch.softmax(qp @ kp / math.sqrt(width), dim=-1)  # (B, h, T, N)
    out = (weights @ vp).transpose(1, 2).reshape(b, t, heads * width)
    return attn.out_proj(out)


def _tokens_to_image(
    attn: Attention, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Tokens (B, T, D) attend to their own image (keys, values (B, N, D)).

    The query of each head is folded into the key projection, (B, h·T, D) against the raw
    keys, and the attention weights average the raw values before the value projection.
    """
    heads, width = _heads(attn)
    b, t, d = q.shape
    qp = attn.q_proj(q).view(b, t, heads, width) / math.sqrt(width)
    w_k = attn.k_proj.weight.view(heads, width, d)
    folded = torch.einsum("bthw,hwd->bhtd", qp, w_k).reshape(b, heads * t, d)
    shift = torch.einsum("bthw,hw->bht", qp, attn.k_proj.bias.view(heads, width))
    scores = folded @ keys.transpose(1, 2) + shift.reshape(b, heads * t, 1)  # (B, h·T, N)
    mixed = torch.softmax(scores, dim=-1) @ values  # (B, h·T, D)
    w_v = attn.v_proj.weight.view(heads, width, d)
    out = torch.einsum("bhtd,hwd->bthw", mixed.view(b, heads, t, d), w_v)
    out = out + attn.v_proj.bias.view(heads, width)
    return attn.out_proj(out.reshape(b, t, heads * width))


def _block_keys(attn: Attention, tokens: torch.Tensor) -> torch.Tensor:
    """Keys of the prompt tokens as a block-diagonal (B, h·w, h·T) matrix: per-head products of
    the image's projected queries with them come out of one matrix product."""
    heads, width = _heads(attn)
    b, t, _ = tokens.shape
    kp = attn.k_proj(tokens).view(b, t, heads, width).permute(0, 2, 3, 1)  # (B, h, w, T)
    eye = torch.eye(heads, dtype=kp.dtype, device=kp.device)
    blocks = kp[:, :, :, None, :] * eye[None, :, None, :, None]  # (B, h, w, h, T)
    return blocks.reshape(b, heads * width, heads * t)


def _value_outputs(attn: Attention, tokens: torch.Tensor) -> torch.Tensor:
    """Each token's value, per head, through the output projection: (B, h·T, D)."""
    heads, width = _heads(attn)
    b, t, _ = tokens.shape
    vp = attn.v_proj(tokens).view(b, t, heads, width)
    w_o = attn.out_proj.weight.view(-1, heads, width)  # (D, h, w)
    return torch.einsum("bthw,dhw->bhtd", vp, w_o).reshape(b, heads * t, -1)


def _image_to_tokens(
    attn: Attention, scores: torch.Tensor, tokens_v: torch.Tensor, heads: int
) -> torch.Tensor:
    """Softmax over each head's T tokens of scores (B, N, h·T), then the update (B, N, D)."""
    b, n, ht = scores.shape
    weights = torch.softmax(scores.view(b, n, heads, ht // heads), dim=-1).view(b, n, ht)
    return weights @ _value_outputs(attn, tokens_v) + attn.out_proj.bias


def _image_to_shared_queries(
    attn: Attention, image_q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """The image (queries (1, N, D), shared) attends to each item's tokens (k, v (B, T, D))."""
    heads, width = _heads(attn)
    qi = attn.q_proj(image_q) / math.sqrt(width)  # (1, N, h·w)
    scores = qi @ _block_keys(attn, k)  # (B, N, h·T)
    return _image_to_tokens(attn, scores, v, heads)


def _image_to_own_tokens(
    attn: Attention, image_q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Each item's image (queries (B, N, D)) attends to its tokens: the tokens' keys are folded
    into the query projection, (B, D, h·T) against the raw image."""
    heads, width = _heads(attn)
    b, t, d = k.shape
    kp = attn.k_proj(k).view(b, t, heads, width) / math.sqrt(width)
    w_q = attn.q_proj.weight.view(heads, width, d)
    folded = torch.einsum("bthw,hwd->bdht", kp, w_q).reshape(b, d, heads * t)
    shift = torch.einsum("bthw,hw->bht", kp, attn.q_proj.bias.view(heads, width))
    scores = image_q @ folded + shift.reshape(b, 1, heads * t)
    return _image_to_tokens(attn, scores, v, heads)


def _channel_norm(norm: LayerNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``norm`` (a LayerNorm2d) over the channels of (B, C, H, W), without changing layout."""
    centred = x - x.mean(1, keepdim=True)
    scale = torch.rsqrt((centred * centred).mean(1, keepdim=True) + norm.eps)
    return centred * scale * norm.weight[:, None, None] + norm.bias[:, None, None]


class FieldDecoder(nn.Module):
    """The multimask outputs of SAM (and of WSI-SAM's HR path) for B prompts on one field.

    Holds no weights of its own: it reads those of ``model`` (a :class:`~engine.wsi_sam.WsiSam`)
    at every call, so it follows the heads the model has.
    """

    def __init__(self, model: WsiSam) -> None:
        super().__init__()
        self.model = model

    @property
    def _sam_tokens(self) -> slice:
        """SAM's IoU and mask tokens: what its masks and scores are read from."""
        return slice(0, 1 + self.decoder.num_mask_tokens)

    @property
    def decoder(self) -> MaskDecoder:
        decoder: MaskDecoder = self.model.sam.mask_decoder
        return decoder

    def _transformer(
        self, image: torch.Tensor, pe: torch.Tensor, tokens: torch.Tensor, wanted: slice
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's two-way transformer on a shared image (1, N, D) (embedding + dense prompt) with
        encoding pe (1, N, D) and each item's tokens (B, T, D): the ``wanted`` tokens (B, T', D)
        (the final attention treats each token on its own, so it runs for those only) and the
        image (B, N, D)."""
        transformer = self.decoder.transformer
        layers = list(transformer.layers)
        first = layers[0]
        assert isinstance(first, TwoWayAttentionBlock) and first.skip_first_layer_pe
        # first layer: the image is still the shared one
        queries = first.norm1(_token_attention(first.self_attn, tokens, tokens, tokens))
        keyed = image + pe
        queries = first.norm2(
            queries
            + _tokens_to_shared_image(
                first.cross_attn_token_to_image, queries + tokens, keyed, image
            )
        )
        queries = first.norm3(queries + first.mlp(queries))
        keys = first.norm4(
            image
            + _image_to_shared_queries(
                first.cross_attn_image_to_token, keyed, queries + tokens, queries
            )
        )
        for layer in layers[1:]:
            assert isinstance(layer, TwoWayAttentionBlock)
            q = queries + tokens
            queries = layer.norm1(queries + _token_attention(layer.self_attn, q, q, queries))
            queries = layer.norm2(
                queries
                + _tokens_to_image(
                    layer.cross_attn_token_to_image, queries + tokens, keys + pe, keys
                )
            )
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = layer.norm4(
                keys
                + _image_to_own_tokens(
                    layer.cross_attn_image_to_token, keys + pe, queries + tokens, queries
                )
            )
        queries, tokens = queries[:, wanted], tokens[:, wanted]
        queries = transformer.norm_final_attn(
            queries
            + _tokens_to_image(
                transformer.final_attn_token_to_image, queries + tokens, keys + pe, keys
            )
        )
        return queries, keys

    def _tokens(self, sparse: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        decoder = self.decoder
        fixed = [decoder.iou_token.weight, decoder.mask_tokens.weight]
        if extra is not None:
            fixed.append(extra)
        head = torch.cat(fixed).to(sparse.dtype)
        return torch.cat([head.expand(sparse.shape[0], -1, -1), sparse], dim=1)

    def _image(
        self, embedding: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, D, H, W) embedding and dense prompt -> image and encoding tokens (1, H·W, D)."""
        image = (embedding + dense).flatten(2).transpose(1, 2)
        pe = self.model.sam.prompt_encoder.get_dense_pe().to(image.dtype)
        return image, pe.flatten(2).transpose(1, 2)

    def _upscaled_rows(self, keys: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, 64·64, D) -> upscaled features (B, 64·64·16, 32), rows in sub-pixel
        order (b, h, w, i, j, k, l): the pixel (4h + 2i + k, 4w + 2j + l)."""
        block = self.decoder.output_upscaling
        first, norm, second = block[0], block[1], block[3]
        assert isinstance(first, nn.ConvTranspose2d) and isinstance(second, nn.ConvTranspose2d)
        assert isinstance(norm, LayerNorm2d) and first.bias is not None
        assert second.bias is not None
        b, n, d = keys.shape
        mid, out = first.out_channels, second.out_channels
        w1 = first.weight.permute(0, 2, 3, 1).reshape(d, 4 * mid)
        hidden = (keys @ w1 + first.bias.repeat(4)).view(b, n * 4, mid)
        hidden = block[2](F.layer_norm(hidden, (mid,), norm.weight, norm.bias, norm.eps))
        w2 = second.weight.permute(0, 2, 3, 1).reshape(mid, 4 * out)
        rows = (hidden @ w2 + second.bias.repeat(4)).view(b, n * 16, out)
        return block[4](rows)

    def _upscaled(self, keys: torch.Tensor, side: int) -> torch.Tensor:
        """Image tokens (B, side², D) -> upscaled features (B, 32, 4·side, 4·side)."""
        block = self.decoder.output_upscaling
        b, _, d = keys.shape
        x = keys.transpose(1, 2).reshape(b, d, side, side)
        norm = block[1]
        assert isinstance(norm, LayerNorm2d)
        x = block[2](_channel_norm(norm, block[0](x)))
        return block[4](block[3](x))

    @staticmethod
    def _place(rows: torch.Tensor, side: int) -> torch.Tensor:
        """(B, side²·16, C) sub-pixel rows -> (B, C, 4·side, 4·side)."""
        b, _, c = rows.shape
        grid = rows.view(b, side, side, 2, 2, 2, 2, c).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return grid.reshape(b, c, 4 * side, 4 * side)

    def _masks(
        self, queries: torch.Tensor, rows: torch.Tensor, side: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's three multimask logits (B, 3, 4·side, 4·side) and their IoU predictions (B, 3)."""
        decoder = self.decoder
        mlps = decoder.output_hypernetworks_mlps
        hyper = torch.stack([mlps[i](queries[:, 1 + i, :]) for i in range(1, len(mlps))], dim=2)
        masks = self._place(rows @ hyper, side)  # (B, 32) vectors dotted per pixel
        iou = decoder.iou_prediction_head(queries[:, 0, :])[:, 1:]
        return masks, iou

    def sam(
        self, embedding: torch.Tensor, dense: torch.Tensor, sparse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's multimask logits (B, 3, 256, 256) and IoU predictions (B, 3).

        Args:
            embedding: the field's (1, 256, 64, 64) image embedding.
            dense: the (1, 256, 64, 64) dense prompt embedding (SAM's no-mask embedding).
            sparse: (B, N, 256) embedded prompts.
        """
        image, pe = self._image(embedding, dense)
        queries, keys = self._transformer(image, pe, self._tokens(sparse, None), self._sam_tokens)
        return self._masks(queries, self._upscaled_rows(keys), embedding.shape[-1])

    def wsi_sam(
        self,
        hr_embedding: torch.Tensor,
        lr_embedding: torch.Tensor,
        hr_static: torch.Tensor,
        dense: torch.Tensor,
        hr_sparse: torch.Tensor,
        lr_sparse: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """WSI-SAM's multimask HR logits (B, 3, 256, 256) and SAM's IoU predictions (B, 3).

        As :meth:`~engine.wsi_sam.WsiSam.decode_hr` (its outputs 1 to 3) for batch-1 fields:
        ``hr_static`` (1, 32, 256, 256) from :meth:`~engine.wsi_sam.WsiSam.hr_static_features`,
        ``dense`` SAM's no-mask embedding, prompts embedded on the HR and on the LR patch.
        """
        model = self.model
        side = hr_embedding.shape[-1]
        hr_image, pe = self._image(hr_embedding, dense)
        lr_image, _ = self._image(lr_embedding, dense)
        queries, keys = self._transformer(
            hr_image, pe, self._tokens(hr_sparse, None), self._sam_tokens
        )
        sam_masks, iou = self._masks(queries, self._upscaled_rows(keys), side)
        slot = 1 + self.decoder.num_mask_tokens  # the head's token, after SAM's
        wanted = slice(slot, slot + 1)
        hr_queries, hr_keys = self._transformer(
            hr_image, pe, self._tokens(hr_sparse, model.hr_head.token.weight), wanted
        )
        lr_queries, _ = self._transformer(
            lr_image, pe, self._tokens(lr_sparse, model.lr_head.token.weight), wanted
        )
        token = model.merge_tokens(
            model.hr_head.token_mlp(hr_queries[:, 0, :]),
            model.lr_head.token_mlp(lr_queries[:, 0, :]),
        )  # (B, 32)
        upscaled = self._upscaled(hr_keys, side)  # (B, 32, 256, 256)
        fusion = model.hr_head.embedding_maskfeature
        conv1, norm, conv2 = fusion[0], fusion[1], fusion[3]
        assert isinstance(norm, LayerNorm2d) and isinstance(conv2, nn.Conv2d)
        assert conv2.bias is not None
        hidden = fusion[2](_channel_norm(norm, conv1(upscaled)))  # (B, 64, 256, 256)
        b, c, h, w = hidden.shape
        # the last convolution with the token folded in: 9 taps of one channel each
        taps = torch.einsum("omyx,bo->byxm", conv2.weight, token).reshape(b, 9, c)
        planes = (taps @ hidden.view(b, c, h * w)).view(b, 9, h, w)
        padded = F.pad(planes, (1, 1, 1, 1))
        head = (token @ hr_static.reshape(hr_static.shape[1], -1)).view(b, h, w)
        head = head + (token @ conv2.bias)[:, None, None]
        for dy in range(3):
            for dx in range(3):
                head = head + padded[:, 3 * dy + dx, dy : dy + h, dx : dx + w]
        return sam_masks + head[:, None], iou


def runtime_field_decoders(model: WsiSam) -> Any:
    """The decoder runtime's converted field graphs for ``model``'s current heads (an object
    with ``sam`` and ``wsi_sam`` as :class:`FieldDecoder`'s), or None to decode in torch."""
    backend = getattr(model, "decoder_backend", None)
    make = getattr(backend, "field_decoders", None)
    if make is None or getattr(backend, "heads_version", None) != model.heads_version:
        return None
    return make()


def decode_points(
    model: WsiSam,
    hr: PatchFeatures,
    lr: PatchFeatures | None,
    hr_static: torch.Tensor | None,
    prompts: Prompts,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimask logits (B, 3, 256, 256) and IoU predictions (B, 3) for B point prompts on one
    field: WSI-SAM's HR logits when ``lr`` (and ``hr_static``) are given, SAM's otherwise.

    Runs on the decoder runtime's field graphs when it has them (falling back to torch, with a
    warning, when they cannot be converted or compiled), else in torch.
    """
    global _warned
    with model.sam.decoder_autocast():
        hr_sparse, dense = model._embed_prompts(prompts)
        args: tuple[torch.Tensor, ...]
        if lr is not None:
            assert hr_static is not None
            lr_sparse, _ = model._embed_prompts(prompts.to_lr())
            args = (hr.embedding, lr.embedding, hr_static, dense[:1], hr_sparse, lr_sparse)
        else:
            args = (hr.embedding, dense[:1], hr_sparse)
        runtime = runtime_field_decoders(model)
        if runtime is not None and hr_sparse.shape[1] == 2:
            try:
                return runtime.wsi_sam(*args) if lr is not None else runtime.sam(*args)
            except BackendError as exc:
                if not _warned:
                    logger.warning("field decoders run in torch: %s", exc)
                    _warned = True
        decoder = FieldDecoder(model)
        logits, iou = decoder.wsi_sam(*args) if lr is not None else decoder.sam(*args)
        return logits.float(), iou.float()


_warned = False
