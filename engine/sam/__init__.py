"""Segment Anything with the TinyViT (MobileSAM) image encoder, one module per component.

- :mod:`engine.sam.tiny_vit`: the image encoder (TinyViT + SAM neck)
- :mod:`engine.sam.prompt_encoder`: points, boxes and masks to prompt embeddings
- :mod:`engine.sam.transformer`: the two-way transformer
- :mod:`engine.sam.mask_decoder`: tokens to masks and IoU predictions
- :mod:`engine.sam.sam`: the assembled model and :func:`~engine.sam.sam.build_mobile_sam`
- :mod:`engine.sam.common`: LayerNorm2d, MLP blocks

Parameter names follow the original checkpoints, so ``mobile_sam.pt`` loads directly
(see :func:`engine.weights.load_sam`).
"""
