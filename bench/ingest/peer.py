"""The straightforward Python peer of `pipeline prepare` for an ImageNet-layout folder:
PIL decode (+ EXIF transpose, RGB), resize so the shorter side <= S (bicubic), JPEG re-encode at
quality Q unless the source already is an upright RGB JPEG within the bound (then its bytes are
kept, as ours does), pyarrow Parquet write with the same schema layout; all cores through
multiprocessing. Prints one JSON line."""
import argparse
import io
import json
import os
import time
from multiprocessing import Pool
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

SCHEMA = pa.schema([
    ("id", pa.string()), ("split", pa.string()), ("label", pa.int32()),
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("width", pa.int32()), ("height", pa.int32()),
])


def process(job):
    root, split, rel, label, short, quality = job
    raw = (Path(root) / rel).read_bytes()
    try:
        im = Image.open(io.BytesIO(raw))
        im.load()
        keep = im.format == "JPEG" and im.mode == "RGB" and im.getexif().get(274, 1) == 1
        im = ImageOps.exif_transpose(im)
        if im.mode != "RGB":
            im = im.convert("RGB")
        w, h = im.size
        if short and min(w, h) > short:
            s = short / min(w, h)
            w, h = (short if w <= h else round(w * s)), (short if h < w else round(h * s))
            im = im.resize((w, h), Image.BICUBIC)
            keep = False
        if keep:
            data = raw
        else:
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=quality)
            data = buf.getvalue()
        return (rel, split, label, data, w, h)
    except Exception as e:  # noqa: BLE001 - a skip, as ours records
        return (rel, split, None, str(e), 0, 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("out")
    ap.add_argument("--max-short-side", type=int, default=256)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args()
    start = time.time()
    root = Path(args.root)
    jobs = []
    for split in ["train", "val"]:
        wnids = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
        for label, wnid in enumerate(wnids):
            for f in sorted((root / split / wnid).iterdir()):
                jobs.append((str(root), split, f"{split}/{wnid}/{f.name}", label, args.max_short_side, args.quality))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = skipped = 0
    writers = {}
    rows = []

    def flush():
        by_split = {}
        for r in rows:
            by_split.setdefault(r[1], []).append(r)
        for split, rs in by_split.items():
            if split not in writers:
                writers[split] = pq.ParquetWriter(
                    out / f"{split}.parquet", SCHEMA, compression="zstd",
                    use_dictionary=["id", "split"], write_statistics=["id", "label", "width", "height"],
                    column_encoding=None)
            table = pa.table({
                "id": [r[0] for r in rs], "split": [r[1] for r in rs], "label": [r[2] for r in rs],
                "image": [{"bytes": r[3], "path": r[0]} for r in rs],
                "width": [r[4] for r in rs], "height": [r[5] for r in rs],
            }, schema=SCHEMA)
            writers[split].write_table(table)
        rows.clear()

    with Pool(os.cpu_count()) as pool:
        for r in pool.imap(process, jobs, chunksize=64):
            if r[2] is None:
                skipped += 1
                continue
            rows.append(r)
            n += 1
            if len(rows) >= 1024:
                flush()
    flush()
    for w in writers.values():
        w.close()
    secs = time.time() - start
    print(json.dumps({"images": n, "skipped": skipped, "seconds": secs, "images_per_s": n / secs}))


if __name__ == "__main__":
    main()
