"""Convert the image encoder (its prompt graph and the stage-maps graph of the instance
decoders) and the shipped heads' decoders to OpenVINO IR for the bundle.

    python packaging/convert_models.py OUT_DIR [--checkpoint PATH]

writes ``OUT_DIR/<model_key>/encoder.xml`` (+ ``.bin``; the stages graph under its own key),
where ``<model_key>`` is the engine's own key for this checkpoint, this OpenVINO version and the
encoder graph's version (``engine.backends.openvino_backend.model_key``). The spec copies
``OUT_DIR`` into the bundle as ``openvino_models/``, the folder ``find_or_convert`` looks in
first when the app is frozen (``bundled_models_dir()``), so a frozen app never converts. Folders
of other keys (an older OpenVINO, another checkpoint) are removed; an IR already there for the
current key is kept.
Prints the IR's path.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


def convert_models(out_dir: Path, checkpoint: str | None = None) -> Path:
    """Make ``out_dir`` hold exactly the converted encoder of ``checkpoint`` and the converted
    decoders of the shipped heads; return the encoder's IR."""
    from engine.backends.openvino_backend import IR_NAME, convert_encoder, model_key
    from engine.backends.openvino_decoder import DECODER_GRAPHS, convert_decoders, decoders_key
    from engine.build import load_wsi_sam

    model = load_wsi_sam(
        checkpoint=checkpoint, device="cpu", backend="torch", precision="f32", fast_decoders=False
    )
    sam = model.sam
    key = model_key(sam.checkpoint_info.sha256)
    stages_key = model_key(sam.checkpoint_info.sha256, "stages")
    decoders = decoders_key(model)
    target = out_dir / key
    out_dir.mkdir(parents=True, exist_ok=True)
    for other in out_dir.iterdir():
        if other.name not in (key, stages_key, decoders):
            if other.is_dir():
                shutil.rmtree(other)
            else:
                other.unlink()
    decoder_dir = out_dir / decoders
    graphs = [
        decoder_dir / f"{name}{suffix}"
        for name in DECODER_GRAPHS
        for suffix in (".xml", ".bin")
    ]
    if not all(path.is_file() for path in graphs):
        if decoder_dir.exists():  # incomplete: convert again
            shutil.rmtree(decoder_dir)
        convert_decoders(model, decoder_dir)
    for folder, graph in ((out_dir / stages_key, "stages"), (target, "encoder")):
        ir = folder / IR_NAME
        if ir.is_file() and ir.with_suffix(".bin").is_file():
            continue
        if folder.exists():  # incomplete: convert again
            shutil.rmtree(folder)
        convert_encoder(sam.image_encoder, folder, graph)
    return target / IR_NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "out_dir", type=Path, help="the folder that becomes the bundle's openvino_models/"
    )
    parser.add_argument("--checkpoint", help="SAM checkpoint (default: the installed MobileSAM)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ir = convert_models(args.out_dir, args.checkpoint)
    print(f"OpenVINO encoder for the bundle: {ir} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
