#!/usr/bin/env python3
"""Loads a `trainer export` folder into timm without glue and compares its output with ours on
the reference input `trainer export --check` wrote: `forward_features` for a pre-trained
encoder, the class logits of `forward` for a fine-tuned classifier.

    python tests/python/timm_check.py EXPORT_DIR CHECK.safetensors

The folder is loaded twice, both ways timm users do it:
  timm.create_model("local-dir:EXPORT_DIR", pretrained=True)         (config.json + weights)
  timm.create_model(<architecture>, pretrained=True,
                    pretrained_cfg_overlay=dict(config["pretrained_cfg"], file=...),
                    **config["model_args"])
Needs torch, timm and safetensors (not part of `make test`: torch is gigabytes). Exits 1 when
the largest difference exceeds the tolerance."""
import json
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file


def main() -> int:
    export, check = Path(sys.argv[1]), sys.argv[2]
    config = json.loads((export / "config.json").read_text())
    ref = load_file(check)
    classifier = "logits" in ref
    models = {
        "local-dir": timm.create_model(f"local-dir:{export}", pretrained=True),
        "overlay": timm.create_model(
            config["architecture"],
            pretrained=True,
            # The exported pretrained_cfg too: without its num_classes timm would drop the head.
            pretrained_cfg_overlay=dict(config["pretrained_cfg"], file=str(export / "model.safetensors")),
            **config["model_args"],
        ),
    }
    worst = 0.0
    for how, model in models.items():
        # timm loads strictly: every tensor of the file has a place and every parameter a value.
        model.eval()
        with torch.no_grad():
            if classifier:
                pre = model.forward_head(model.forward_features(ref["input"]), pre_logits=True)
                pairs = {"pre_logits": (ref["pre_logits"], pre), "logits": (ref["logits"], model.head(pre))}
            else:
                pairs = {"forward_features": (ref["features"], model.forward_features(ref["input"]))}
        data = timm.data.resolve_data_config({}, model=model)
        for name, (ours, theirs) in pairs.items():
            diff = (ours - theirs).abs().max().item()
            scale = ours.abs().max().item()
            worst = max(worst, diff / max(1.0, scale))
            print(
                f"timm {timm.__version__}, torch {torch.__version__}, {how}: {config['architecture']} "
                f"({config['model_args']['img_size']}px/{config['model_args']['patch_size']}, dim "
                f"{config['model_args']['embed_dim']}, depth {config['model_args']['depth']}, "
                f"{config['num_classes']} classes); {name} {tuple(theirs.shape)}: "
                f"max |ours - timm| = {diff:.2e} (max |value| {scale:.3g})"
            )
        print(f"  data config: {data}")
        if how == "local-dir" and config.get("label_names"):
            if model.pretrained_cfg.get("label_names") != config["label_names"]:
                print(f"label names: timm has {model.pretrained_cfg.get('label_names')}")
                return 1
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
