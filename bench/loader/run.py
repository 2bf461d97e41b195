"""bench/loader: the pre-training input pipeline alone (encoded images -> decode -> random resized
crop to 224 -> flip -> normalized float batch), ours against torchvision's, on the same JPEG
bytes, in the same run, per core and on all cores; prints img/s, the ratios, and how many
cores would feed ViT-S/16 at 8,000 img/s (one H100 with torch.compile).

- ours: `trainer bench-loader` (the trainer's own loader on the run's training rows; it checks
  that the batch it times equals the trainer's `make_batch` for the run's seed) with
  --threads 1 and --threads 0 (one per core).
- torchvision ImageFolder + DataLoader (PIL decode, RandomResizedCrop bicubic, flip, ToTensor,
  Normalize), over the shard's JPEG bytes written out as an ImageFolder tree.
- torchvision.io.decode_jpeg + transforms.v2 on uint8 tensors (the same crop, flip, normalize).
Per core: DataLoader without workers and one torch thread; all cores: one worker per core.
Every side times the batches after its first. Usage: python bench/loader/run.py [--data DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, io, transforms
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[2]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FEED = 8000  # ViT-S/16 img/s on one H100 with torch.compile (bf16)


def shard_images(data):
    """(bytes, label) of every train row, from the prepared shards."""
    manifest = json.loads((data / "manifest.json").read_text())
    rows = []
    for s in manifest["shards"]:
        if s["split"] != "train":
            continue
        t = pq.read_table(data / s["file"], columns=["image", "label"])
        for img, label in zip(t.column("image").to_pylist(), t.column("label").to_pylist()):
            rows.append((img["bytes"], label))
    return rows


def image_folder(rows, root):
    for k, (b, label) in enumerate(rows):
        d = root / f"{label:04d}"
        d.mkdir(exist_ok=True)
        (d / f"{k:06d}.jpg").write_bytes(b)


class Decoded(Dataset):
    """torchvision.io.decode_jpeg + v2 transforms on the bytes in memory."""

    def __init__(self, rows, size):
        self.rows = rows
        self.t = v2.Compose([
            v2.RandomResizedCrop(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        b, label = self.rows[i]
        img = io.decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=io.ImageReadMode.RGB)
        return self.t(img), label


def timed(loader, batches):
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, _ = next(it)
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def torch_rate(ds, batch, batches, workers):
    torch.set_num_threads(1)
    dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                    persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    return timed(dl, batches)


def ours(args, threads):
    cmd = [args.trainer, "--quiet", "bench-loader", "--recipes", str(REPO / "datasets"), "--data", str(args.data),
           "--out", os.path.join(tempfile.gettempdir(), "bench-loader-unused"), "--method", "splitmask",
           "--model", args.model, "--batch-size", str(args.batch), "--batches", str(args.batches),
           "--threads", str(threads)]
    if args.vocab:
        cmd += ["--vocab", args.vocab]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"trainer bench-loader failed: {p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO / "data/imagenette")
    ap.add_argument("--vocab", help="vocabulary file (default: the first vocab-*.safetensors in --data)")
    ap.add_argument("--trainer", default=str(REPO / "target/release/trainer"))
    ap.add_argument("--model", default="small", help="ViT preset: its view side (224 for small)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    args = ap.parse_args()
    if args.vocab is None:
        vocabs = sorted(args.data.glob("vocab-*.safetensors"))
        args.vocab = str(vocabs[0]) if vocabs else None

    rows = shard_images(args.data)
    one, all_cores = ours(args, 1), ours(args, 0)
    size = one["size"]
    tv = transforms.Compose([
        transforms.RandomResizedCrop(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    with tempfile.TemporaryDirectory() as tmp:
        image_folder(rows, Path(tmp))
        folder = datasets.ImageFolder(tmp, transform=tv)
        pil = [torch_rate(folder, args.batch, args.batches, w) for w in (0, args.cores)]
    decoded = Decoded(rows, size)
    dj = [torch_rate(decoded, args.batch, args.batches, w) for w in (0, args.cores)]

    ours_rate = [one["images_per_s"], all_cores["images_per_s"]]
    print(f"{len(rows)} train images of {args.data}, views of {size} px, batch {args.batch}, "
          f"{args.batches} timed batches after the first; pixels equal the trainer's: "
          f"{one['pixels_match'] and all_cores['pixels_match']}")
    print(f"| loader | 1 core (img/s) | {args.cores} cores (img/s) | ours / it, 1 core | ours / it, {args.cores} cores |")
    print("|---|---:|---:|---:|---:|")
    print(f"| ours (trainer bench-loader) | {ours_rate[0]:.0f} | {ours_rate[1]:.0f} | | |")
    for name, r in [("torchvision ImageFolder + DataLoader (PIL)", pil), ("torchvision decode_jpeg + v2", dj)]:
        print(f"| {name} | {r[0]:.0f} | {r[1]:.0f} | {ours_rate[0] / r[0]:.2f}x | {ours_rate[1] / r[1]:.2f}x |")
    print(f"cores to feed ViT-S/16 at {FEED} img/s: ours {FEED / ours_rate[0]:.0f}, "
          f"ImageFolder {FEED / pil[0]:.0f}, decode_jpeg {FEED / dj[0]:.0f}")


if __name__ == "__main__":
    main()
