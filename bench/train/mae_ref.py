"""The PyTorch peer of `trainer bench --method mae`: MAE as He et al.'s models_mae.py builds it
(random masking by argsort of noise, the encoder on the visible patches, fixed 2-D sin-cos
positions, a decoder of its own width, per-patch normalized pixel targets, MSE on the dropped
patches), with the trainer's encoder (pre-norm blocks, fused qkv with bias, layer scale 0.1,
LayerNorm eps 1e-6) and the same step: upload, forward, backward, global-norm clipping at 3.0
and AdamW. Eager, f32, on the CPU. Prints one JSON line like the SplitMask reference.

Usage: python bench/train/mae_ref.py --dim 128 --depth 4 --heads 4 --img 64 --patch 8 \
    --dec-dim 128 --dec-depth 2 --dec-heads 4 --batch 64 --warmup 3 --steps 10
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos(grid, dim):
    """MAE's get_2d_sincos_pos_embed with a zero row for the class token: [1 + grid², dim]."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    parts = []
    for coord in (xs.reshape(-1), ys.reshape(-1)):
        out = np.einsum("m,d->md", coord, omega)
        parts += [np.sin(out), np.cos(out)]
    table = np.concatenate(parts, axis=1)
    return torch.tensor(np.concatenate([np.zeros((1, dim)), table]), dtype=torch.float32)


class Block(nn.Module):
    def __init__(self, dim, heads, layer_scale):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        ls = (lambda: nn.Parameter(torch.full((dim,), layer_scale))) if layer_scale else (lambda: None)
        self.ls1, self.ls2 = ls(), ls()

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        x = x + (a * self.ls1 if self.ls1 is not None else a)
        m = self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return x + (m * self.ls2 if self.ls2 is not None else m)


class MAE(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.p, grid = a.patch, a.img // a.patch
        self.patch_embed = nn.Linear(3 * a.patch * a.patch, a.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, a.dim))
        self.register_buffer("pos", sincos(grid, a.dim)[None])
        self.blocks = nn.ModuleList(Block(a.dim, a.heads, 0.1) for _ in range(a.depth))
        self.norm = nn.LayerNorm(a.dim, eps=1e-6)
        self.decoder_embed = nn.Linear(a.dim, a.dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, a.dec_dim))
        self.register_buffer("dec_pos", sincos(grid, a.dec_dim)[None])
        self.decoder_blocks = nn.ModuleList(Block(a.dec_dim, a.dec_heads, None) for _ in range(a.dec_depth))
        self.decoder_norm = nn.LayerNorm(a.dec_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(a.dec_dim, 3 * a.patch * a.patch)

    def patchify(self, x):
        b, c, h, w = x.shape
        p = self.p
        return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)

    def forward(self, images, ratio=0.75):
        patches = self.patchify(images)
        b, n, _ = patches.shape
        keep = int(n * (1 - ratio))
        order = torch.argsort(torch.rand(b, n), dim=1)
        restore = torch.argsort(order, dim=1)
        x = self.patch_embed(patches) + self.pos[:, 1:]
        x = torch.gather(x, 1, order[:, :keep, None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([(self.cls_token + self.pos[:, :1]).expand(b, -1, -1), x], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n - keep, -1)], 1)
        tokens = torch.gather(tokens, 1, restore[:, :, None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], 1) + self.dec_pos
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
        target = (patches - mean) / (var + 1e-6) ** 0.5
        dropped = torch.ones(b, n)
        dropped[:, :keep] = 0
        dropped = torch.gather(dropped, 1, restore)
        return (((pred - target) ** 2).mean(-1) * dropped).sum() / dropped.sum()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ["dim", "depth", "heads", "img", "patch", "dec-dim", "dec-depth", "dec-heads", "batch",
                 "warmup", "steps"]:
        ap.add_argument(f"--{name}", type=int, required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = MAE(a)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    host = np.random.default_rng(1).uniform(-2, 2, (a.batch, 3, a.img, a.img)).astype(np.float32)
    times, loss = [], None
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        x = torch.from_numpy(host)
        loss = model(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"torch_version": torch.__version__, "step_ms_wall_mean": 1e3 * sum(times) / len(times),
                      "loss_last": loss.item()}))


if __name__ == "__main__":
    main()
