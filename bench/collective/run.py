"""bench/collective: the per-update all-reduce of data-parallel training, ours (burn-collective
between in-process flex workers) and PyTorch's (torch.distributed gloo between processes), on
the same ViT-sized gradients in the same run; prints both and the ratio.

Usage: python3 bench/collective/run.py [--workers 2] [--dim 384] [--depth 12] [--updates 10]"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from peer import size_args  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    size_args(ap)
    a = ap.parse_args()
    flags = ["--workers", str(a.workers), "--dim", str(a.dim), "--depth", str(a.depth), "--updates", str(a.updates)]
    ours = subprocess.run(["cargo", "run", "-q", "--release", "--manifest-path", str(HERE / "Cargo.toml"), "--", *flags],
                          capture_output=True, text=True)
    if ours.returncode != 0:
        sys.exit(ours.stderr)
    peer = subprocess.run([sys.executable, str(HERE / "peer.py"), *flags], capture_output=True, text=True)
    if peer.returncode != 0:
        sys.exit(peer.stderr)
    o, p = json.loads(ours.stdout.strip().splitlines()[-1]), json.loads(peer.stdout.strip().splitlines()[-1])
    assert o["values"] == p["values"], (o, p)
    print(f"all-reduce (Mean) of {o['values'] / 1e6:.2f}M f32 in {o['tensors']} tensors, {a.workers} CPU workers, per update:")
    print(f"  {o['engine']:<45} median {o['median_s'] * 1e3:8.1f} ms  (min {o['min_s'] * 1e3:.1f})")
    print(f"  {p['engine']:<45} median {p['median_s'] * 1e3:8.1f} ms  (min {p['min_s'] * 1e3:.1f})")
    print(f"  ratio (torch / ours, >1 means ours is faster): {p['median_s'] / o['median_s']:.2f}x")
    print(f"  check: {a.workers} workers' reduced share gradients vs the whole batch's, max |diff| "
          f"{o['shares_vs_whole_max_diff']:.1e}")


if __name__ == "__main__":
    main()
