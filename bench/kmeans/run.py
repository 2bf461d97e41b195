"""bench/kmeans: k-means of N x 192 Imagenette patches into k centroids for I iterations with
ours (pipeline/examples/bench_kmeans.rs) and with faiss (faiss-cpu) in the same run: same
points, same initial centroids, same number of threads; prints seconds, objectives and the
ratio. Then tokenization throughput (patches/s): our blocked GEMM + argmax against numpy's
matmul + argmax on the same patches and centroids.

Usage: python3 bench/kmeans/run.py [--data data/imagenette] [--n 200000] [--k 8192] [--iterations 25]
(`make demo` or `make prepare` writes data/imagenette first.)"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO / "data/imagenette"))
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--iterations", type=int, default=25)
    args = ap.parse_args()
    import faiss

    threads = os.cpu_count()
    faiss.omp_set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run(
            ["cargo", "run", "-q", "--release", "-p", "pipeline", "--example", "bench_kmeans", "--",
             "--data", args.data, "--n", str(args.n), "--k", str(args.k), "--iterations", str(args.iterations),
             "--out", tmp], cwd=REPO, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(p.stderr)
        ours = json.loads(p.stdout.strip().splitlines()[-1])
        x = np.load(Path(tmp) / "x.npy")
        c0 = np.load(Path(tmp) / "c0.npy")
        centroids = np.load(Path(tmp) / "centroids.npy")
        km = faiss.Kmeans(x.shape[1], args.k, niter=args.iterations, spherical=True, seed=0,
                          max_points_per_centroid=10**9, verbose=False)
        t = time.time()
        km.train(x, init_centroids=c0)
        faiss_secs = time.time() - t
        # Same definition as ours: sum ||x - c||^2 over the assignment to the final centroids.
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(km.centroids)
        dots, _ = index.search(x, 1)
        faiss_final = float((2.0 - 2.0 * dots[:, 0].astype(np.float64)).sum())

        # Tokenization: numpy matmul + argmax in the same 512-row blocks as ours.
        t = time.time()
        tokens = np.empty(len(x), dtype=np.int64)
        for s in range(0, len(x), 512):
            tokens[s:s + 512] = np.argmax(x[s:s + 512] @ centroids.T, axis=1)
        np_secs = time.time() - t
        ours_tokens = np.fromfile(Path(tmp) / "tokens.u32", dtype=np.uint32)
        agree = float((ours_tokens == tokens).mean())

    print(f"k-means N={ours['n']} d={ours['d']} k={args.k} iterations={args.iterations} threads={threads}")
    print(f"  ours : {ours['seconds']:.1f} s, objective {ours['final_objective']:.1f}")
    print(f"  faiss: {faiss_secs:.1f} s, objective {faiss_final:.1f}")
    print(f"  speed ratio (faiss time / ours) {faiss_secs / ours['seconds']:.2f}x, "
          f"objective ours/faiss {ours['final_objective'] / faiss_final:.4f}")
    print(f"tokenize {len(x)} patches x {args.k} entries: ours {ours['patches_per_s']:.0f} patches/s, "
          f"numpy {len(x) / np_secs:.0f} patches/s, ratio {ours['patches_per_s'] / (len(x) / np_secs):.2f}x, "
          f"same tokens {100 * agree:.2f}%")


if __name__ == "__main__":
    main()
