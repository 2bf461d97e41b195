"""Reads a prepared dataset's shards with pyarrow, independently of our Rust reader, and prints
[id, split, label, width, height] per row as JSON. Also checks the HF and splitmask footers."""
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

root = Path(sys.argv[1])
manifest = json.loads((root / "manifest.json").read_text())
rows = []
for shard in manifest["shards"]:
    f = pq.ParquetFile(root / shard["file"])
    meta = f.schema_arrow.metadata or {}
    hf = json.loads(meta[b"huggingface"])
    assert hf["info"]["features"]["image"]["_type"] == "Image", hf
    sm = json.loads(meta[b"splitmask"])
    assert sm["class_names"] == manifest["class_names"], "class names differ from the manifest"
    t = f.read(columns=["id", "split", "label", "width", "height", "image"])
    assert t.schema.field("image").type.names == ["bytes", "path"]
    for r in t.select(["id", "split", "label", "width", "height"]).to_pylist():
        rows.append([r["id"], r["split"], r["label"], r["width"], r["height"]])
json.dump(rows, sys.stdout)
