"""Wrap a `trainer export --layout vitdet|mmseg` backbone in PyTorch's checkpoint format.

    python tools/safetensors_to_pth.py OUT/model.safetensors OUT/model.pth --key model

detectron2's DetectionCheckpointer reads `{"model": state_dict}` (--key model, ViTDet);
mmsegmentation's `init_cfg=dict(type="Pretrained", checkpoint=...)` reads `{"state_dict": ...}`
(--key state_dict). Needs only torch: the safetensors file is parsed here (an 8-byte header
length, a JSON header, then the raw little-endian tensors), with its sizes checked.
"""
import argparse
import json
import struct
import sys

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
    header = json.loads(data[8 : 8 + n])
    body = memoryview(data)[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(t["dtype"])
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
    torch.save({a.key: sd}, a.dst)
    print(f"wrote {a.dst}: {len(sd)} tensors under {a.key!r}")


if __name__ == "__main__":
    main()
