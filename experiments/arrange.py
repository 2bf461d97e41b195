"""Arranges real Imagenette photos under the file names of a dataset's real metadata, so the
paper's train/test datasets can be tried (and `make experiment` run on them) where only their
metadata is at hand. Dataset class c gets photos of Imagenette class c % 10: train names from
Imagenette's train split, test names from its val split, so labels stay learnable and no photo is
in both splits. Photos are symbolic links; the metadata files are copied (or trimmed with
--per-class).

  python3 experiments/arrange.py food101 --out data/raw/food101-imagenette
  python3 experiments/arrange.py domainnet --domain sketch --classes 10 --out data/raw/sketch-imagenette
"""
import argparse
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def photos(split):
    root = SHARED / "data" / "imagenette" / split
    if not root.is_dir():
        sys.exit(f"{root} is absent (../shared/data/imagenette)")
    return [sorted(d.iterdir()) for d in sorted(root.iterdir()) if d.is_dir()]


class Filler:
    def __init__(self):
        self.pools = {True: photos("train"), False: photos("val")}
        self.used = defaultdict(int)

    def put(self, train, cls, dest):
        pool = self.pools[train]
        files = pool[cls % len(pool)]
        k = self.used[(train, cls % len(pool))]
        self.used[(train, cls % len(pool))] += 1
        if k >= len(files):
            sys.exit(f"Imagenette has only {len(files)} photos of class {cls % len(pool)}: use --per-class")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        os.symlink(files[k], dest)


def keep(lines, cls, per_class):
    """The first `per_class` lines of each class (all with None)."""
    seen = defaultdict(int)
    out = []
    for line in lines:
        seen[cls(line)] += 1
        if per_class is None or seen[cls(line)] <= per_class:
            out.append(line)
    return out


def read(path):
    return [l for l in path.read_text().splitlines() if l.strip()]


def food101(out, per_class):
    meta = SHARED / "fixtures" / "food101" / "meta"
    classes = read(meta / "classes.txt")
    (out / "meta").mkdir(parents=True, exist_ok=True)
    shutil.copy(meta / "classes.txt", out / "meta" / "classes.txt")
    fill = Filler()
    for split in ["train", "test"]:
        lines = keep(read(meta / f"{split}.txt"), lambda l: l.split("/")[0], per_class)
        (out / "meta" / f"{split}.txt").write_text("".join(l + "\n" for l in lines))
        for l in lines:
            fill.put(split == "train", classes.index(l.split("/")[0]), out / "images" / f"{l}.jpg")
        print(f"{split}: {len(lines)} images")


def domainnet(out, domain, classes, per_class):
    lists = SHARED / "fixtures" / "domainnet"
    fill = Filler()
    out.mkdir(parents=True, exist_ok=True)
    for split in ["train", "test"]:
        label = lambda l: int(l.rsplit(" ", 1)[1])
        lines = [l for l in read(lists / f"{domain}_{split}.txt") if label(l) < classes]
        lines = keep(lines, label, per_class)
        (out / f"{domain}_{split}.txt").write_text("".join(l + "\n" for l in lines))
        for l in lines:
            fill.put(split == "train", label(l), out / l.rsplit(" ", 1)[0])
        print(f"{split}: {len(lines)} images")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["food101", "domainnet"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-class", type=int, help="keep at most this many images per class and split")
    p.add_argument("--domain", default="sketch", help="DomainNet domain (clipart, painting, sketch)")
    p.add_argument("--classes", type=int, default=10, help="DomainNet: the first N classes")
    a = p.parse_args()
    if a.dataset == "food101":
        food101(a.out, a.per_class)
    else:
        domainnet(a.out, a.domain, a.classes, a.per_class)


if __name__ == "__main__":
    main()
