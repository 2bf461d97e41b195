"""Reads a prepared dataset's shards with the real clients (HF `datasets`, polars, duckdb) and
checks what each reports against the manifest: features, rows per split and per label, and one
decoded image against ours. Prints what each client reported as JSON; exits non-zero with a
message on the first disagreement.

  python3 tests/python/clients.py <prepared dir> [<our decoded image .json>]

The image JSON (written by the Rust test) holds {"id", "width", "height", "rgb"}: `rgb` a file
of width x height x 3 bytes decoded by our reader.
"""
import json
import sys
from collections import Counter
from pathlib import Path


def fail(msg):
    sys.exit(f"clients.py: {msg}")


def main():
    root = Path(sys.argv[1])
    ours = json.loads(Path(sys.argv[2]).read_text()) if len(sys.argv) > 2 else None
    manifest = json.loads((root / "manifest.json").read_text())
    names = manifest["class_names"]
    files = {}
    for s in manifest["shards"]:
        files.setdefault(s["split"], []).append(str(root / s["file"]))
    expected = {
        split: {int(k): v for k, v in stats["per_class"].items()}
        for split, stats in manifest["splits"].items()
        if stats["images"] > 0
    }
    if set(files) != set(expected):
        fail(f"splits with shards {sorted(files)} != splits with images {sorted(expected)}")
    report = {"datasets": hf(files, names, expected, ours), "polars": polars(files, expected),
              "duckdb": duckdb(files, expected)}
    json.dump(report, sys.stdout)


def hf(files, names, expected, ours):
    import datasets
    import numpy as np
    from PIL import Image

    out = {}
    for split, paths in sorted(files.items()):
        # `datasets`' own loader, nothing but the files.
        ds = datasets.load_dataset("parquet", data_files={split: paths}, split=split)
        f = ds.features
        if not isinstance(f["image"], datasets.Image):
            fail(f"{split}: image is {f['image']!r}, not Image")
        if not isinstance(f["mask"], datasets.Image):
            fail(f"{split}: mask is {f['mask']!r}, not Image")
        if names:
            if not isinstance(f["label"], datasets.ClassLabel):
                fail(f"{split}: label is {f['label']!r}, not ClassLabel")
            if f["label"].names != names:
                fail(f"{split}: ClassLabel names differ from the manifest's")
        counts = dict(Counter(ds.data.column("label").to_pylist()))
        if counts != expected[split]:
            fail(f"{split}: datasets counts {counts} != manifest {expected[split]}")
        first = ds[0]["image"]
        if not isinstance(first, Image.Image):
            fail(f"{split}: image decodes to {type(first)}, not a PIL image")
        out[split] = {"rows": len(ds), "image": repr(f["image"]), "label": type(f["label"]).__name__,
                      "classes": len(f["label"].names) if names else None}
        if ours and ours["split"] == split:
            ids = ds.data.column("id").to_pylist()
            if ours["id"] not in ids:
                fail(f"{ours['id']} not in {split}")
            img = ds[ids.index(ours["id"])]["image"].convert("RGB")
            if img.size != (ours["width"], ours["height"]):
                fail(f"{ours['id']}: datasets decodes {img.size}, ours {ours['width']}x{ours['height']}")
            theirs = np.asarray(img, dtype=np.int16)
            mine = np.frombuffer(Path(ours["rgb"]).read_bytes(), dtype=np.uint8).astype(np.int16)
            diff = np.abs(theirs.reshape(-1) - mine)
            # Two JPEG decoders (libjpeg-turbo in PIL, ours in Rust) round IDCT and chroma
            # upsampling differently by a level or two; a different image is off by tens.
            if diff.mean() > 1.0:
                fail(f"{ours['id']}: mean |datasets - ours| = {diff.mean():.3f}")
            out["image_check"] = {"id": ours["id"], "mean_abs_diff": float(diff.mean()),
                                  "max_abs_diff": int(diff.max())}
    return out


def polars(files, expected):
    import polars as pl

    out = {}
    for split, paths in sorted(files.items()):
        df = pl.scan_parquet(paths).group_by("label").agg(pl.len().alias("n")).collect()
        counts = {int(r["label"]): int(r["n"]) for r in df.iter_rows(named=True)}
        if counts != expected[split]:
            fail(f"{split}: polars counts {counts} != manifest {expected[split]}")
        dtype = pl.scan_parquet(paths).collect_schema()["label"]
        out[split] = {"rows": sum(counts.values()), "labels": len(counts), "label_dtype": str(dtype)}
    return out


def duckdb(files, expected):
    import duckdb as ddb

    out = {}
    con = ddb.connect()
    for split, paths in sorted(files.items()):
        rows = con.execute("select label, count(*) from read_parquet(?) group by label", [paths]).fetchall()
        counts = {int(label): int(n) for label, n in rows}
        if counts != expected[split]:
            fail(f"{split}: duckdb counts {counts} != manifest {expected[split]}")
        splits = con.execute("select distinct split from read_parquet(?)", [paths]).fetchall()
        if splits != [(split,)]:
            fail(f"{split}: duckdb sees split values {splits}")
        out[split] = {"rows": sum(counts.values()), "labels": len(counts)}
    return out


if __name__ == "__main__":
    main()
