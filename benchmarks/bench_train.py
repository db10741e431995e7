"""Time the pieces of WSI-SAM training and evaluation on this machine (prints figures).

    .venv/bin/python benchmarks/bench_train.py [--device cpu] [--batch-size 4] [--steps 3]

Reports: one encoder pass (one 1024x1024 patch), one training step (forward + backward + AdamW on
cached features, per batch), one WSI-SAM and one SAM decoder pass (evaluation, per object and
prompt), one LiteMedSAM box prediction, and the wall and CPU time of each.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch


def timed(label: str, fn: Callable[[], object], runs: int) -> None:
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    print(f"{label:<44} wall {np.median(walls):7.3f} s   cpu {np.median(cpus):7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    from engine.build import load_wsi_sam
    from engine.medsam import load_lite_medsam
    from engine.train.loss import wsi_sam_loss
    from engine.wsi_sam import PatchFeatures, Prompts

    model = load_wsi_sam(heads="none", device=args.device)
    device = model.device
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    b = args.batch_size
    image = torch.rand(1, 3, 1024, 1024) * 255
    timed("encode one patch", lambda: model.encode(image), args.steps)

    hr = PatchFeatures(torch.randn(b, 256, 64, 64), torch.randn(b, 160, 64, 64)).to(device)
    lr = PatchFeatures(torch.randn(b, 256, 64, 64), torch.randn(b, 160, 64, 64)).to(device)
    prompts = Prompts(boxes=torch.tensor([[400.0, 380, 620, 640]] * b)).to(device)
    targets = (torch.rand(b, 1, 256, 256, device=device) > 0.5).float()
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    model.train()

    def step() -> None:
        out = model(hr, lr, prompts)
        loss = wsi_sam_loss(out.hr_logits, out.lr_logits, targets, targets).total
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    timed(f"training step, batch {b}", step, args.steps)
    model.eval()
    one = Prompts(boxes=prompts.boxes[:1] if prompts.boxes is not None else None)
    with torch.no_grad():
        timed("WSI-SAM decoders, one object", lambda: model(hr[0], lr[0], one), args.steps)
        timed("SAM decoder, one object", lambda: model.sam_forward(hr[0], one), args.steps)
    medsam = load_lite_medsam(device=args.device)
    patch = np.full((1024, 1024, 3), 200, np.uint8)
    box = np.array([400.0, 380, 620, 640])
    timed("LiteMedSAM box prediction (encoder incl.)", lambda: medsam.segment(patch, box), 2)


if __name__ == "__main__":
    main()
