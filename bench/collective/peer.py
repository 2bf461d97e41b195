"""torch.distributed (gloo) all-reduce of the same ViT-sized gradients between N CPU processes:
the peer of bench/collective (run by run.py). Prints one JSON line."""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def shapes(dim, depth):
    out = []
    for _ in range(depth):
        out += [(dim, 3 * dim), (dim, dim), (dim, 4 * dim), (4 * dim, dim)]
    return out + [(3 * 16 * 16, dim), (197, dim)]


def work(rank, n, dim, depth, updates, port, queue):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=n)
    times = []
    for _ in range(updates + 1):
        grads = [torch.randn(s) for s in shapes(dim, depth)]
        dist.barrier()  # both peers start the clock together, as on the burn side
        t0 = time.perf_counter()
        for g in grads:
            dist.all_reduce(g)
            g /= n  # Mean, as the burn side asks for
        times.append(time.perf_counter() - t0)
    if rank == 0:
        queue.put(sorted(times[1:]))
    dist.destroy_process_group()


def size_args(ap):
    """The flags both sides of the bench take (run.py passes them to each)."""
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--updates", type=int, default=10)


def main():
    ap = argparse.ArgumentParser()
    size_args(ap)
    ap.add_argument("--port", type=int, default=29517)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=work, args=(r, a.workers, a.dim, a.depth, a.updates, a.port, queue))
             for r in range(a.workers)]
    for p in procs:
        p.start()
    t = queue.get()
    for p in procs:
        p.join()
    values = sum(x * y for x, y in shapes(a.dim, a.depth))
    print(json.dumps({"engine": f"torch {torch.__version__} gloo (processes)", "workers": a.workers,
                      "values": values, "median_s": t[len(t) // 2], "min_s": t[0]}))


if __name__ == "__main__":
    main()
