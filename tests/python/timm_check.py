#!/usr/bin/env python3
"""Loads a `trainer export --format timm` file into timm's VisionTransformer (strict) and
compares its forward_features with ours on the reference input `trainer export --check` wrote.

    python tests/python/timm_check.py EXPORT.safetensors CHECK.safetensors

Needs torch, timm and safetensors (not part of `make test`: torch is gigabytes). Exits 1 when
the largest difference exceeds the tolerance."""
import json
import sys

import torch
import timm
from safetensors import safe_open
from safetensors.torch import load_file


def main() -> int:
    export, check = sys.argv[1], sys.argv[2]
    with safe_open(export, "pt") as f:
        source = json.loads(f.metadata()["splitmask.source"])
    vit = source["vit"]
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=vit["image_size"],
        patch_size=vit["patch_size"],
        embed_dim=vit["dim"],
        depth=vit["depth"],
        num_heads=vit["heads"],
        mlp_ratio=vit["mlp_ratio"],
        qkv_bias=True,
        init_values=vit["layer_scale_init"],
        num_classes=0,
    )
    state = load_file(export)
    model.load_state_dict(state, strict=True)
    model.eval()
    ref = load_file(check)
    with torch.no_grad():
        ours = ref["features"]
        theirs = model.forward_features(ref["input"])
    diff = (ours - theirs).abs().max().item()
    scale = ours.abs().max().item()
    print(
        f"timm {timm.__version__}, torch {torch.__version__}: {len(state)} tensors loaded strictly into "
        f"VisionTransformer({vit['image_size']}px/{vit['patch_size']}, dim {vit['dim']}, depth {vit['depth']}); "
        f"forward_features {tuple(theirs.shape)}: max |ours - timm| = {diff:.2e} (max |value| {scale:.2f})"
    )
    return 0 if diff <= 1e-4 * max(1.0, scale) else 1


if __name__ == "__main__":
    sys.exit(main())
