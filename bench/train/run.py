"""bench/train: training steps per second of `trainer bench` on each backend (flex; LibTorch on
the CPU) and of the PyTorch reference (../shared/anchors/torch_ref/bench_splitmask.py, eager,
f32; for MAE bench/train/mae_ref.py, MAE's models_mae.py with the trainer's encoder; for DINO
bench/train/dino_ref.py, main_dino.py's step) on the same
configurations, in one run on one machine; prints a table with the ratios.

Both sides time the whole step: image upload and normalisation, the tokenizer, forward, backward
and AdamW, at batch 64 and V=1024 by default. The reference knows only ViT-S/B presets, so the
CPU presets are added to its table here with the trainer's dimensions (VitConfig::cpu_tiny,
cpu_small). Throughput is batch x steps / wall time of the timed steps on both sides; each
implementation runs --repeat times, interleaved with the others, and keeps its best run (a
2-core machine shared with other work drifts by 20% between runs; the best run is the one the
machine disturbed least, for every side alike).

Usage: .venv/bin/python bench/train/run.py [--trainer target/release/trainer] [--models cpu-tiny,cpu-small]"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO.parent / "shared/anchors/torch_ref"
# The trainer's CPU presets (trainer/src/model/vit.rs); the reference has no drop-path.
PRESETS = {
    "cpu-tiny": dict(dim=128, depth=4, heads=4, img=64, patch=8),
    "cpu-small": dict(dim=192, depth=6, heads=3, img=64, patch=8),
}


def reference_main(argv):
    """Runs the reference's main() with the CPU presets added (a subprocess of the bench)."""
    sys.path.insert(0, str(REFERENCE))
    import bench_splitmask as ref

    ref.PRESETS.update(PRESETS)
    sys.argv = ["bench_splitmask.py", *argv]
    ref.main()


def last_json(stdout, what):
    for line in reversed(stdout.splitlines()):
        if line.strip().startswith("{"):
            return json.loads(line)
    sys.exit(f"{what} printed no result:\n{stdout}")


def ours(trainer, backend, model, method, a):
    # The reference has no drop path; the class token stays (it is part of our encoder: 3.4% more
    # GEMM work in the encoder at 64 px).
    cmd = [trainer, "bench", "--backend", backend, "--device", "cpu", "--model", model, "--method", method,
           "--batch-size", str(a.batch), "--vocab-size", str(a.vocab), "--warmup", str(a.warmup),
           "--steps", str(a.steps), "--drop-path", "0", "--quiet"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    r = last_json(p.stdout, "trainer bench")
    return {"name": r["impl_name"], "img_per_s": r["images_per_s"], "loss": r["final_loss"]}


def theirs(model, method, a):
    if method == "mae":
        # MaeConfig::for_vit on the CPU presets: 2 decoder blocks of the encoder's width and heads.
        d = PRESETS[model]
        cmd = [sys.executable, str(Path(__file__).with_name("mae_ref.py")), "--dim", str(d["dim"]), "--depth",
               str(d["depth"]), "--heads", str(d["heads"]), "--img", str(d["img"]), "--patch", str(d["patch"]),
               "--dec-dim", str(d["dim"]), "--dec-depth", "2", "--dec-heads", str(d["heads"])]
    elif method == "dino":
        # DinoConfig::for_vit and MultiCrop::dino on the CPU presets: 4,096 prototypes, hidden 512,
        # bottleneck 128; 8 local crops of 96/224 of the side in whole patches.
        d = PRESETS[model]
        local = max(1, round(d["img"] * 96 / 224 / d["patch"])) * d["patch"]
        cmd = [sys.executable, str(Path(__file__).with_name("dino_ref.py")), "--dim", str(d["dim"]), "--depth",
               str(d["depth"]), "--heads", str(d["heads"]), "--img", str(d["img"]), "--patch", str(d["patch"]),
               "--local", str(local), "--locals", "8", "--prototypes", "4096", "--hidden", "512",
               "--bottleneck", "128"]
    else:
        cmd = [sys.executable, __file__, "--as-reference", "--device", "cpu", "--fp32", "--model", model,
               "--method", method, "--vocab", str(a.vocab)]
    cmd += ["--batch", str(a.batch), "--warmup", str(a.warmup), "--steps", str(a.steps)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"the PyTorch reference ({method}) failed:\n{p.stderr}")
    r = last_json(p.stdout, "the PyTorch reference")
    return {"name": f"torch-{r['torch_version']}-eager-f32", "img_per_s": a.batch / r["step_ms_wall_mean"] * 1e3,
            "loss": r["loss_last"]}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--as-reference":
        return reference_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainer", default=str(REPO / "target/release/trainer"))
    ap.add_argument("--backends", default="native,tch", help="trainer backends (native = flex on the CPU)")
    ap.add_argument("--models", default="cpu-tiny,cpu-small")
    ap.add_argument("--methods", default="splitmask,beit,mae,dino")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2, help="runs per implementation; the best is kept")
    ap.add_argument("--out", default=str(REPO / "bench/out/train.jsonl"))
    a = ap.parse_args()
    if not (REFERENCE / "bench_splitmask.py").exists():
        sys.exit(f"{REFERENCE}/bench_splitmask.py not found (../shared next to the repository)")
    rows = []
    for model in a.models.split(","):
        for method in a.methods.split(","):
            runs = {"torch": []}
            for _ in range(a.repeat):
                runs["torch"].append(theirs(model, method, a))
                for backend in a.backends.split(","):
                    runs.setdefault(backend, []).append(ours(a.trainer, backend, model, method, a))
            best = {k: max(v, key=lambda r: r["img_per_s"]) for k, v in runs.items()}
            ref = best.pop("torch")
            row = {"model": model, "method": method, "batch": a.batch, "vocab": a.vocab, "torch": ref,
                   "ours": list(best.values()), "runs": runs}
            rows.append(row)
            cells = ", ".join(f"{o['name']} {o['img_per_s']:.1f} ({o['img_per_s'] / ref['img_per_s']:.2f}x)"
                              for o in row["ours"])
            print(f"{model} {method}: {ref['name']} {ref['img_per_s']:.1f} img/s; {cells}", file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    names = [o["name"] for o in rows[0]["ours"]]
    print(f"\nimg/s, batch {a.batch}, V={a.vocab}, {os.cpu_count()} CPU threads, {a.steps} timed steps after {a.warmup}, "
          f"best of {a.repeat} runs each")
    print("| model | method | PyTorch eager | " + " | ".join(f"{n} | ratio" for n in names) + " |")
    print("|---|---|---:|" + "---:|---:|" * len(names))
    for r in rows:
        t = r["torch"]["img_per_s"]
        cells = " | ".join(f"{o['img_per_s']:.1f} | {o['img_per_s'] / t:.2f}x" for o in r["ours"])
        print(f"| {r['model']} | {r['method']} | {t:.1f} | {cells} |")
    print(f"\nfinal losses (different random init and data; a sanity check, not a match): "
          + "; ".join(f"{r['model']} {r['method']}: torch {r['torch']['loss']:.3f}, "
                      + ", ".join(f"{o['name']} {o['loss']:.3f}" for o in r["ours"]) for r in rows))
    print(f"rows written to {a.out}")


if __name__ == "__main__":
    main()
