"""bench/collective: the per-update all-reduce of data-parallel training, ours (burn-collective
between in-process flex workers, and its multi-node mode between processes over loopback) and
PyTorch's (torch.distributed gloo between processes), on the same ViT-sized gradients in the
same run; prints each and the ratios.

Usage: python3 bench/collective/run.py [--workers 2] [--dim 384] [--depth 12] [--updates 10]"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from peer import size_args  # noqa: E402


def free_port(n):
    """A port p with p..p+n free on 127.0.0.1 now."""
    import socket
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        try:
            held = []
            for i in range(n + 1):
                t = socket.socket()
                held.append(t)
                t.bind(("0.0.0.0", p + i))
            return p
        except OSError:
            continue
        finally:
            for t in held:
                t.close()
    raise SystemExit("no free ports")


def main():
    ap = argparse.ArgumentParser()
    size_args(ap)
    a = ap.parse_args()
    flags = ["--workers", str(a.workers), "--dim", str(a.dim), "--depth", str(a.depth), "--updates", str(a.updates)]
    ours = subprocess.run(["cargo", "run", "-q", "--release", "--manifest-path", str(HERE / "Cargo.toml"), "--", *flags],
                          capture_output=True, text=True)
    if ours.returncode != 0:
        sys.exit(ours.stderr)
    # The multi-node mode: one process per worker, node 0 hosting the orchestrator.
    binary = HERE / "target" / "release" / "bench-collective"
    size = ["--workers", "1", "--dim", str(a.dim), "--depth", str(a.depth), "--updates", str(a.updates)]
    port = free_port(a.workers + 1)
    # Output to files, not pipes: the collective logs every transfer, and a process blocked on
    # a full pipe that nobody reads yet would stall its peer in the all-reduce.
    with tempfile.TemporaryDirectory() as tmp:
        logs = [(open(f"{tmp}/{r}.out", "w+"), open(f"{tmp}/{r}.err", "w+")) for r in range(a.workers)]
        nodes = [subprocess.Popen([str(binary), *size, "--nodes", str(a.workers), "--node-rank", str(r),
                                   "--port", str(port)], stdout=o, stderr=e, text=True)
                 for r, (o, e) in enumerate(logs)]
        for p in nodes:
            p.wait(timeout=600)
        outs = []
        for o, e in logs:
            o.seek(0)
            e.seek(0)
            outs.append((o.read(), e.read()))
    if any(p.returncode != 0 for p in nodes):
        sys.exit("\n".join(err[-4000:] for _, err in outs))
    # The collective logs to stdout too: the result is the last JSON line.
    m = json.loads([line for line in outs[0][0].splitlines() if line.startswith("{")][-1])
    peer = subprocess.run([sys.executable, str(HERE / "peer.py"), *flags], capture_output=True, text=True)
    if peer.returncode != 0:
        sys.exit(peer.stderr)
    o, p = json.loads(ours.stdout.strip().splitlines()[-1]), json.loads(peer.stdout.strip().splitlines()[-1])
    assert o["values"] == p["values"], (o, p)
    print(f"all-reduce (Mean) of {o['values'] / 1e6:.2f}M f32 in {o['tensors']} tensors, {a.workers} CPU workers, per update:")
    print(f"  {o['engine']:<45} median {o['median_s'] * 1e3:8.1f} ms  (min {o['min_s'] * 1e3:.1f})")
    print(f"  {m['engine']:<45} median {m['median_s'] * 1e3:8.1f} ms  (min {m['min_s'] * 1e3:.1f})")
    print(f"  {p['engine']:<45} median {p['median_s'] * 1e3:8.1f} ms  (min {p['min_s'] * 1e3:.1f})")
    print(f"  ratio (torch / ours, >1 means ours is faster): in-process {p['median_s'] / o['median_s']:.2f}x, "
          f"multi-node {p['median_s'] / m['median_s']:.2f}x (both between processes over loopback)")
    print(f"  check: {a.workers} workers' reduced share gradients vs the whole batch's, max |diff| "
          f"{o['shares_vs_whole_max_diff']:.1e}")


if __name__ == "__main__":
    main()
