"""The PyTorch peer of `trainer bench --method dino`: one DINO step as Caron et al.'s
main_dino.py takes it (facebookresearch/dino): a student ViT with DINOHead (3-layer MLP, GELU, an
L2-normalized bottleneck, a weight-normalized last layer with its gain fixed at 1) on 2 global and
8 local crops (the multi-crop wrapper runs each resolution as one batch, the positions resized
bicubically), the teacher (a copy, no gradient) on the 2 global crops, DINOLoss (centred and
sharpened teacher, cross-entropy over every pair of different views, the centre's EMA), per-
parameter clipping at 3.0, AdamW and the teacher's EMA (a benchmark's few steps are past DINO's
frozen-prototype epoch, 1/300 of the run, as on our side). The ViT is the trainer's for DINO: pre-norm blocks, fused qkv with bias, no layer
scale, LayerNorm eps 1e-6, class token. Eager, f32, on the CPU. Prints one JSON line like the
SplitMask reference.

Usage: python bench/train/dino_ref.py --dim 128 --depth 4 --heads 4 --img 64 --patch 8 \
    --local 24 --locals 8 --prototypes 4096 --hidden 512 --bottleneck 128 --batch 64 --warmup 3 --steps 10
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_ref import Block


class ViT(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, a.dim, a.patch, a.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, a.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (a.img // a.patch) ** 2, a.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(a.dim, a.heads, None) for _ in range(a.depth))
        self.norm = nn.LayerNorm(a.dim, eps=1e-6)

    def positions(self, grid):
        """DINO's interpolate_pos_encoding: the patch positions resized bicubically to `grid`."""
        cls, patches = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = int(patches.shape[1] ** 0.5)
        if grid == side:
            return self.pos_embed
        d = patches.shape[-1]
        p = patches.reshape(1, side, side, d).permute(0, 3, 1, 2)
        p = F.interpolate(p, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([cls, p.permute(0, 2, 3, 1).reshape(1, -1, d)], 1)

    def forward(self, x):
        x = self.patch_embed(x)
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.positions(grid)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


class DINOHead(nn.Module):
    def __init__(self, dim, prototypes, hidden, bottleneck):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, prototypes, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        self.last_layer.weight_g.requires_grad = False

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class MultiCrop(nn.Module):
    """main_dino.py's MultiCropWrapper: one backbone pass per run of same-size crops."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops):
        sizes = torch.tensor([c.shape[-1] for c in crops])
        ends = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0)
        out, start = [], 0
        for end in ends.tolist():
            out.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(out))


def dino_loss(student, teacher, center, views, student_temp=0.1, teacher_temp=0.04):
    s = (student / student_temp).chunk(views)
    t = F.softmax((teacher - center) / teacher_temp, dim=-1).detach().chunk(2)
    total, terms = 0.0, 0
    for iq, q in enumerate(t):
        for v in range(views):
            if v == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(s[v], dim=-1), dim=-1).mean()
            terms += 1
    return total / terms


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ["dim", "depth", "heads", "img", "patch", "local", "locals", "prototypes", "hidden", "bottleneck",
                 "batch", "warmup", "steps"]:
        ap.add_argument(f"--{name}", type=int, required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    build = lambda: MultiCrop(ViT(a), DINOHead(a.dim, a.prototypes, a.hidden, a.bottleneck))
    # As main_dino.py: built twice, the teacher given the student's weights (weight_norm's
    # parameters cannot be deep-copied).
    student, teacher = build(), build()
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    center = torch.zeros(1, a.prototypes)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.04)
    rng = np.random.default_rng(1)
    host = rng.uniform(-2, 2, (a.batch, 3, a.img, a.img)).astype(np.float32)
    times, loss = [], None
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        x = torch.from_numpy(host)
        crops = [x, x.clone()] + [x[:, :, :a.local, :a.local].contiguous() for _ in range(a.locals)]
        with torch.no_grad():
            t_out = teacher(crops[:2])
        s_out = student(crops)
        loss = dino_loss(s_out, t_out, center, len(crops))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in params:  # main_dino.py's clip_gradients: each parameter's norm at most 3
            if p.grad is not None:
                norm = p.grad.data.norm(2)
                p.grad.data.mul_((3.0 / (norm + 1e-6)).clamp(max=1))
        opt.step()
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.data.mul_(0.996).add_((1 - 0.996) * ps.detach().data)
            center = center * 0.9 + t_out.mean(0, keepdim=True) * 0.1
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"torch_version": torch.__version__, "step_ms_wall_mean": 1e3 * sum(times) / len(times),
                      "loss_last": loss.item()}))


if __name__ == "__main__":
    main()
