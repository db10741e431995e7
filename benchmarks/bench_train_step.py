"""One WSI-SAM training step (forward + loss + backward + AdamW on cached features), per object,
under the variants of the forward pass, interleaved so that background load hits all alike.

    .venv/bin/python benchmarks/bench_train_step.py [--batch-sizes 4,8] [--rounds 5] [--profile]

Variants: ``per-head`` (each head runs SAM's decoder twice: four decoder calls, the forward
before the batched one); ``conv-elementwise-ln`` (the batched forward with the upscaling and
fusion blocks as convolutions and LayerNorm2d as seven elementwise ops, the training step as this
issue found it: the reference of the ratios); ``conv`` (the same with torch's fused layer_norm);
``pixelwise`` (``WsiSam.forward``: the upscaling blocks as per-pixel matrix products on
channels-last maps and the merged token folded into each branch's last convolution, see
``engine.sam.pixelwise``); ``pixelwise-bf16`` (the same under CPU bf16 autocast; only where the
CPU has native bf16). Prints the median seconds per object of each and its ratio to the
reference, and with ``--profile`` the top operators of one ``pixelwise`` step.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from engine.sam.common import LayerNorm2d
from engine.wsi_sam import PatchFeatures, Prompts, WsiSam


def _elementwise_layer_norm_2d(self: LayerNorm2d, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm2d as it was computed before the fused kernel (mean, variance, scale, shift)."""
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + self.eps)
    return self.weight[:, None, None] * x + self.bias[:, None, None]


def _conv_forward(model: WsiSam, hr: PatchFeatures, lr: PatchFeatures, prompts: Prompts) -> Any:
    """``WsiSam.forward`` as it was before the pixel-wise form: SAM's upscaling and the heads'
    fusion branches as convolutions on channels-first maps, the token applied to the fused map."""
    hr_sparse, hr_dense = model._embed_prompts(prompts)
    lr_sparse, lr_dense = model._embed_prompts(prompts.to_lr())
    batch = hr_sparse.shape[0]
    decoder = model.sam.mask_decoder
    with torch.no_grad():
        sam_hr, _ = model.decode_sam(hr.embedding, hr_sparse, hr_dense)
        sam_lr, _ = model.decode_sam(lr.embedding, lr_sparse, lr_dense)
    extra = torch.cat(
        [
            model.hr_head.token.weight.expand(batch, 1, -1),
            model.lr_head.token.weight.expand(batch, 1, -1),
        ]
    )
    tokens, image_features = decoder.run_transformer(
        torch.cat([hr.embedding, lr.embedding]),
        model.sam.prompt_encoder.get_dense_pe(),
        torch.cat([hr_sparse, lr_sparse]),
        torch.cat([hr_dense, lr_dense]),
        extra_tokens=extra,
    )
    head_tokens = tokens[:, 1 + decoder.num_mask_tokens, :]
    upscaled = decoder.upscale(image_features)
    token = model.merge_tokens(
        model.hr_head.token_mlp(head_tokens[:batch]), model.lr_head.token_mlp(head_tokens[batch:])
    )
    hr_fused = model.hr_head.fuse(hr, upscaled[:batch])
    lr_fused = model.lr_head.fuse(lr, upscaled[batch:])
    return SimpleNamespace(
        hr_logits=model._apply_token(token, hr_fused, sam_hr[:, :1]),
        lr_logits=model._apply_token(token, lr_fused, sam_lr[:, :1]),
    )


@contextlib.contextmanager
def _layer_norm_2d(elementwise: bool) -> Iterator[None]:
    fused = LayerNorm2d.forward
    if elementwise:
        LayerNorm2d.forward = _elementwise_layer_norm_2d  # type: ignore[method-assign]
    try:
        yield
    finally:
        LayerNorm2d.forward = fused  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--variants", default="per-head,conv-elementwise-ln,conv,pixelwise,pixelwise-bf16"
    )
    args = parser.parse_args()

    from engine.backends import autocast, cpu_supports_bf16
    from engine.build import load_wsi_sam
    from engine.train.loss import wsi_sam_loss

    base = load_wsi_sam(heads="none", device="cpu", fast_decoders=False)
    torch.manual_seed(0)
    for p in base.trainable_parameters():
        p.data.normal_(0, 0.02)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "pixelwise-bf16" in variants and not cpu_supports_bf16():
        print("no native bf16 on this CPU: pixelwise-bf16 left out")
        variants.remove("pixelwise-bf16")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; variants {variants}")

    for b in [int(x) for x in args.batch_sizes.split(",")]:
        hr = PatchFeatures(torch.randn(b, 256, 64, 64), torch.randn(b, 160, 64, 64))
        lr = PatchFeatures(torch.randn(b, 256, 64, 64), torch.randn(b, 160, 64, 64))
        prompts = Prompts(boxes=torch.tensor([[400.0, 380, 620, 640]] * b))
        targets = (torch.rand(b, 1, 256, 256) > 0.5).float()
        steps: dict[str, Callable[[], None]] = {}
        for name in variants:
            model = copy.deepcopy(base).train()
            optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
            forward: Callable[..., Any] = model.forward
            if name == "per-head":
                forward = model.forward_per_head
            elif name.startswith("conv"):
                forward = functools.partial(_conv_forward, model)
            precision = "bf16" if name.endswith("bf16") else "f32"
            elementwise = name.endswith("elementwise-ln")

            def step(
                optimiser: torch.optim.Optimizer = optimiser,
                forward: Callable[..., Any] = forward,
                precision: str = precision,
                elementwise: bool = elementwise,
                batch: tuple[PatchFeatures, PatchFeatures, Prompts, torch.Tensor] = (
                    hr,
                    lr,
                    prompts,
                    targets,
                ),
            ) -> None:
                hr_b, lr_b, prompts_b, targets_b = batch
                with _layer_norm_2d(elementwise):
                    with autocast(torch.device("cpu"), precision):
                        out = forward(hr_b, lr_b, prompts_b)
                    loss = wsi_sam_loss(
                        out.hr_logits.float(), out.lr_logits.float(), targets_b, targets_b
                    ).total
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()

            steps[name] = step
            step()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, run_step in steps.items():
                t0 = time.perf_counter()
                run_step()
                times[name].append((time.perf_counter() - t0) / b)
        reference = "conv-elementwise-ln" if "conv-elementwise-ln" in times else None
        for name, values in times.items():
            ratio = ""
            if reference is not None:
                ratio = f", {np.median(values) / np.median(times[reference]):.2f}x the reference"
            print(
                f"batch {b:2d} {name:<22} {np.median(values):.3f} s per object "
                f"(min {min(values):.3f}){ratio}"
            )
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            for name in [v for v in ("pixelwise", "pixelwise-bf16") if v in steps]:
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    steps[name]()
                print(f"--- {name}, batch {b}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
