"""What ordering a young project's queue costs as its waiting tickets grow (issue 10: TypiClust's order, written by
the pre-annotation job before it predicts).

    .venv/bin/python -m bench.queue_order --sizes 1000 10000 100000 --departments 70 549 --out bench/results/queue_order.json

For each size and label space, a child process builds that many waiting tickets (the sample tickets with random edits,
as bench/volume.py makes them) and 100 gold labels, and runs ``AnnotatorView.young_places`` as the pre-annotation job
does: TF-IDF, truncated SVD, k-means with TypiClust's |L| + B clusters (``learning.strategies.typical_clusters``),
nearest neighbours. Its wall time and peak RSS (wait4) are reported; the baseline is the random order it replaced
(a hash of each task id), timed in the same child.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from bench.volume import child, ticket

LABELLED = 100


def one(size: int, departments: int) -> dict:
    from backend.annotator_view import AnnotatorView, shuffled

    rng = random.Random(0)
    texts = [ticket(rng, i)[0] for i in range(size)]
    labelled = [ticket(rng, size + i)[0] for i in range(LABELLED)]
    ids = list(range(1, size + 1))
    started = time.perf_counter()
    places = AnnotatorView(lambda: None).young_places(ids, texts, labelled, departments)
    typical = time.perf_counter() - started
    started = time.perf_counter()
    [shuffled(i) for i in ids]
    return {"typical_seconds": round(typical, 2), "shuffle_seconds": round(time.perf_counter() - started, 3), "placed": len(places)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queue_order", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000], help="waiting tickets (default: %(default)s)")
    parser.add_argument("--departments", type=int, nargs="+", default=[70, 549], help="label-space sizes (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one measurement may take (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "DEPARTMENTS", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        Path(args.one[2]).write_text(json.dumps(one(int(args.one[0]), int(args.one[1]))))
        return 0
    from learning.strategies import typical_clusters

    rows = []
    print("| waiting tickets | departments | clusters | typical order: s (in the child) | child's peak RSS MB | random order (hash) s |\n"
          "|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for departments in args.departments:
            for size in args.sizes:
                result = Path(tmp) / f"{size}-{departments}.json"
                cost = child([sys.executable, "-m", "bench.queue_order", "--one", str(size), str(departments), str(result)],
                             env=dict(os.environ), timeout=args.timeout)
                row = {"size": size, "departments": departments, "clusters": typical_clusters(LABELLED, departments), **cost,
                       **(json.loads(result.read_text()) if result.exists() else {})}
                rows.append(row)
                print(f"| {size} | {departments} | {row['clusters']} | {row.get('typical_seconds', 'timed out')} | "
                      f"{row.get('peak_rss_mb', '')} | {row.get('shuffle_seconds', '')} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
