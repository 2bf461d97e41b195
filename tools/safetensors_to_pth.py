"""Wrap a `trainer export --layout vitdet|mmseg` backbone in PyTorch's checkpoint format.

    python tools/safetensors_to_pth.py OUT/model.safetensors OUT/model.pth --key model

detectron2's DetectionCheckpointer reads `{"model": state_dict}` (--key model, ViTDet);
mmsegmentation's `init_cfg=dict(type="Pretrained", checkpoint=...)` reads `{"state_dict": ...}`
(--key state_dict). Needs only torch: the safetensors file is parsed here (an 8-byte header
length, a JSON header, then the raw little-endian tensors), with its sizes checked.
"""
import argparse
import json
import os
import struct
import sys
import tempfile

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
MAX_HEADER = 100 << 20


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        sys.exit(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        sys.exit(f"{path}: header length {n} does not fit the file")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as e:
        sys.exit(f"{path}: header is not JSON: {e}")
    if not isinstance(header, dict):
        sys.exit(f"{path}: header is not a JSON object")
    body = memoryview(data)[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(t, dict):
            sys.exit(f"{path}: tensor {name}: not a JSON object")
        shape, offsets = t.get("shape"), t.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            sys.exit(f"{path}: tensor {name}: shape and data_offsets must be non-negative integers")
        dtype = DTYPES.get(t.get("dtype"))
        if dtype is None:
            sys.exit(f"{path}: tensor {name}: dtype {t['dtype']} not supported")
        start, end = t["data_offsets"]
        numel = 1
        for s in t["shape"]:
            numel *= s
        if not 0 <= start <= end <= len(body) or end - start != numel * dtype.itemsize:
            sys.exit(f"{path}: tensor {name}: offsets {start}..{end} do not fit its shape or the file")
        flat = torch.frombuffer(bytearray(body[start:end]), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(t["shape"]).clone()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--key", default="model", choices=["model", "state_dict"],
                    help="model: detectron2 (ViTDet); state_dict: mmsegmentation / mmengine")
    a = ap.parse_args()
    sd = read_safetensors(a.src)
    # Written beside the destination, then renamed over it: never a half-written checkpoint.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(a.dst)), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({a.key: sd}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, a.dst)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {a.dst}: {len(sd)} tensors under {a.key!r}")


if __name__ == "__main__":
    main()
