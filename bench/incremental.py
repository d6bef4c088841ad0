"""Online updates between refits (issues 10 and 16): does taking each label in at once help the tickets that come
next, and what does it cost?

    nice -n 10 .venv/bin/python -m bench.incremental --seeds 0 1 2 --out bench/results/incremental.json

Per data set and seed, the rows are shuffled; the SVM the service serves (``LinearSvmClassifier``) is fitted on the
first --initial rows, then the next --stream rows arrive one by one. Each is first predicted (prequential accuracy,
the answer a caller would have got), then learnt. Two models see the same stream: **static** learns a ticket only
at the next refit (every --refit-every labels, as the service refits every few seconds to a minute depending on
volume), **online** also takes every label in at once by the passive-aggressive step (``update``). At every refit
both are the same fit. Update latency is the time of one ``update`` call of one label.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from statistics import mean, median, pstdev

import numpy as np

from bench.instant_model import load
from learning import instant_model
from learning.instant_model import ONLINE_AGGRESSIVENESS, LinearSvmClassifier

DATA = Path("../shared/data")
SETS = {"Shanghai k>=20": ("shanghai_xinfang", 20), "Shanghai all": ("shanghai_xinfang", 1), "Dalian k>=20": ("dalian_gov", 20),
        "Dalian all": ("dalian_gov", 1), "TipDM": ("tipdm2020c", 1)}


def run(texts: list[str], labels: list[str], seed: int, initial: int, stream: int, refit_every: int,
        aggressiveness: list[float]) -> dict:
    order = np.random.default_rng(seed).permutation(len(texts))
    texts, labels = [texts[i] for i in order], [labels[i] for i in order]
    departments = sorted(set(labels))
    stream = min(stream, len(texts) - initial)
    names = ["static", *(f"online C={c:g}" for c in aggressiveness)]
    right = dict.fromkeys(names, 0)
    latencies = []
    models: dict = {}
    for t in range(initial, initial + stream):
        if not models or (t - initial) % refit_every == 0:
            fitted = LinearSvmClassifier("bench", departments).fit(texts[:t], labels[:t], {})
            models = {name: copy.deepcopy(fitted) for name in names}
        for name, model in models.items():
            right[name] += departments[int(np.argmax(model.decision_scores([texts[t]])[0]))] == labels[t]
        for c in aggressiveness:
            instant_model.ONLINE_AGGRESSIVENESS = c
            started = time.perf_counter()
            models[f"online C={c:g}"].update([texts[t]], [labels[t]])
            latencies.append(time.perf_counter() - started)
    return {"seed": seed, "stream": stream, "departments": len(departments), "accuracy": {n: right[n] / stream for n in names},
            "update_ms_p50": 1000 * median(latencies), "update_ms_max": 1000 * max(latencies)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.incremental", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS), help="data sets (default: all five)")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="folder of the dev sets (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--initial", type=int, default=1000, help="rows fitted before the stream (default: %(default)s)")
    parser.add_argument("--stream", type=int, default=600, help="rows arriving one by one (default: %(default)s)")
    parser.add_argument("--refit-every", type=int, default=200, help="labels between two refits (default: %(default)s)")
    parser.add_argument("--aggressiveness", type=float, nargs="+", default=[ONLINE_AGGRESSIVENESS],
                        help="PA-I step bounds (C) to compare; the service uses %(default)s")
    parser.add_argument("--out", type=Path, help="also write every run as JSON here")
    args = parser.parse_args(argv)
    results = {}
    names = ["static", *(f"online C={c:g}" for c in args.aggressiveness)]
    print(f"| data | departments | {' | '.join(names)} | online - static per seed | update p50 / max |")
    print("|---" * (len(names) + 4) + "|")
    for name in args.sets:
        folder, min_per_label = SETS[name]
        texts, labels = load(args.data_dir / folder / "dev.jsonl", min_per_label)
        runs = [run(texts, labels, seed, args.initial, args.stream, args.refit_every, args.aggressiveness) for seed in args.seeds]
        results[name] = runs
        cells = [f"{mean(r['accuracy'][n] for r in runs):.3f} ± {pstdev([r['accuracy'][n] for r in runs]):.3f}" for n in names]
        gains = "; ".join(", ".join(f"{r['accuracy'][n] - r['accuracy']['static']:+.3f}" for r in runs) for n in names[1:])
        print(f"| {name} | {runs[0]['departments']} | {' | '.join(cells)} | {gains}"
              f" | {median(r['update_ms_p50'] for r in runs):.1f} / {max(r['update_ms_max'] for r in runs):.1f} ms |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, ensure_ascii=False, indent=1),
                            encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
