"""bench/ingest: prepare Imagenette with `pipeline prepare` and with the Python peer (peer.py)
on the same input, same settings, same machine, in the same run; print images/s and the ratio.

Two settings: the default (shorter side <= 256: Imagenette's 224 px JPEGs keep their bytes, so
the work is decode-validate + write) and --max-short-side 128 (every image is resized and
re-encoded). Usage: python3 bench/ingest/run.py [--data ../shared/data/imagenette] [--repeat 2]"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def ours(data, out, short):
    shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    p = subprocess.run(
        [str(REPO / "target/release/pipeline"), "prepare", "--dataset", "imagenette", "--recipes", str(REPO / "datasets"),
         "--data-dir", str(data), "--out", str(out), "--no-progress", "--max-short-side", str(short)],
        capture_output=True, text=True)
    secs = time.time() - start
    if p.returncode not in (0, 2):
        sys.exit(f"pipeline failed: {p.stderr}")
    n = int(re.search(r"shards \(\d+ kept from an earlier run\), (\d+) images", p.stdout).group(1))
    return {"images": n, "seconds": secs, "images_per_s": n / secs}


def peer(data, out, short):
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.run([sys.executable, str(Path(__file__).with_name("peer.py")), str(data), str(out),
                        "--max-short-side", str(short)], capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO / "../shared/data/imagenette"))
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    data = Path(args.data).resolve()
    if not data.is_dir():
        sys.exit(f"{data} not found")
    # Warm the page cache so neither side pays the first read.
    for f in data.rglob("*"):
        if f.is_file():
            f.read_bytes()
    print(f"cores: {os.cpu_count()}  data: {data}")
    with tempfile.TemporaryDirectory() as tmp:
        for short in [256, 128]:
            best_ours = best_peer = None
            for _ in range(args.repeat):
                o = ours(data, Path(tmp) / "ours", short)
                p = peer(data, Path(tmp) / "peer", short)
                assert o["images"] == p["images"], (o, p)
                best_ours = o if best_ours is None or o["seconds"] < best_ours["seconds"] else best_ours
                best_peer = p if best_peer is None or p["seconds"] < best_peer["seconds"] else best_peer
            ratio = best_ours["images_per_s"] / best_peer["images_per_s"]
            print(f"max_short_side={short}: ours {best_ours['images_per_s']:.0f} img/s ({best_ours['seconds']:.2f} s), "
                  f"PIL+pyarrow peer {best_peer['images_per_s']:.0f} img/s ({best_peer['seconds']:.2f} s), "
                  f"ratio {ratio:.2f}x  [{best_ours['images']} images, best of {args.repeat}]")


if __name__ == "__main__":
    main()
