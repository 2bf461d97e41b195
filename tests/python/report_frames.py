"""Reads `trainer report`'s runs.parquet and metrics.parquet with pyarrow, polars and duckdb and
prints, per reader, the row counts, the run names and the metric names as JSON; exits non-zero
with a message where the readers disagree.

  python3 tests/python/report_frames.py <report folder>
"""
import json
import sys
from pathlib import Path


def fail(msg):
    sys.exit(f"report_frames.py: {msg}")


def main():
    out = Path(sys.argv[1])
    runs, metrics = str(out / "runs.parquet"), str(out / "metrics.parquet")
    report = {}

    import pyarrow.parquet as pq
    r, m = pq.read_table(runs), pq.read_table(metrics)
    report["pyarrow"] = {"runs": r.num_rows, "metrics": m.num_rows,
                         "names": sorted(r.column("run").to_pylist()),
                         "metric_names": sorted(set(m.column("metric").to_pylist()))}

    import polars as pl
    r, m = pl.read_parquet(runs), pl.read_parquet(metrics)
    report["polars"] = {"runs": r.height, "metrics": m.height,
                        "names": sorted(r["run"].to_list()),
                        "metric_names": sorted(m["metric"].unique().to_list())}

    import duckdb
    con = duckdb.connect()
    report["duckdb"] = {
        "runs": con.execute(f"select count(*) from '{runs}'").fetchone()[0],
        "metrics": con.execute(f"select count(*) from '{metrics}'").fetchone()[0],
        "names": sorted(x[0] for x in con.execute(f"select run from '{runs}'").fetchall()),
        "metric_names": sorted(x[0] for x in con.execute(f"select distinct metric from '{metrics}'").fetchall()),
    }
    first = report["pyarrow"]
    for reader, got in report.items():
        if got != first:
            fail(f"{reader} reads {got}, pyarrow {first}")
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
