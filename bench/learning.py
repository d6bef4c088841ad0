"""Learning on the dev sets, one table (issue 10): the instant model against the reference, the default query
strategy against random order, label-error ranking against the reference, and calibration.

    nice -n 19 .venv/bin/python -m bench.learning --jobs 2 --out bench/results/learning.json

Each data file gives two rows: its units with at least --min-per-label rows ("k = 20") and all its units; a file
whose every unit has that many rows (TipDM) gives one. Per row, three measurements, each reusing a bench module:

* cv: --folds-fold stratified cross-validation (seed 0). In every fold the instant model is fitted through the
  product's path (``bench.calibration.score_split``: label store, frozen split, method choice, temperature fitted
  out of fold, refit on every label) and the reference (``bench.instant_model.baseline``: TF-IDF char 1-3 +
  LinearSVC) on the same training rows; both are scored on the held-out fold with the same report
  (``core.evaluation.classification_report``: accuracy, macro-F1 over the units present in the fold). The same
  fitted instant model gives the ECE before (its method's constant temperature) and after (the fitted one).
* strategy: an active-learning replay (``tools.simulation.simulate``) of the service's default queue order
  (``learning.strategies.DEFAULT``: TypiClust's typical picks, the first batch included, until the model is mature,
  then margin sampling; --strategy replays another) and random order,
  pool = the training rows of the first fold, scored on its held-out rows, one replay per seed up to the largest
  budget that fits the pool. The model is refitted and scored every --step labels and the queue ordered every
  --reorder, as the service refits on every label and orders the queue when a refit has learnt
  QUEUE_REORDER_EVERY_N_LABELS new labels (by pre-annotating again). Accuracy at each
  budget (mean and std over seeds); the saving at 800 labels is ``tools.simulation.compare_to_random`` on the
  curves cut at 800: labels from which the default's mean curve stays at random's mean accuracy at 800, against the
  labels random itself needs by the same rule, and the 5th and 95th percentile of that saving over resamples of
  the seeds (``tools.simulation.saving_interval``).
* noise: ``bench.noise.measure``: 5 % and 10 % of the labels flipped to another unit, precision@K of the quality
  report's default ranking against the out-of-fold LinearSVC margin reference.

With --jobs N the cells, and each replay seed, run as N processes at once and are merged into one file: the numbers
of one process (each part measures exactly what it would), spread over N cores.
A cell too dear for the machine can be left out with --skip ROW:CELL; the table then says "not run (reason)".
The JSON is rewritten after every cell, so an interrupted run keeps what it measured; --from-json re-renders it
(the savings recomputed from the curves' points) and joins the parts of one replay run split by seed (to keep both cores busy) into one strategy cell.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from statistics import mean, stdev

from bench import noise
from bench.calibration import score_split
from bench.instant_model import baseline, load
from core.evaluation import classification_report
from core.settings import Settings
from learning.strategies import DEFAULT, STRATEGIES
from tools.quality import DEFAULT_RANKING
from tools.simulation import CurvePoint, Schedule, Tickets, compare_to_random, mean_curves, percent, saving_interval, simulate

DATA = Path("../shared/data")
DEFAULT_DATA = [DATA / "shanghai_xinfang/dev.jsonl", DATA / "dalian_gov/dev.jsonl", DATA / "tipdm2020c/dev.jsonl"]
DEFAULT_STRATEGY = DEFAULT  # the service's queue order (backend.annotator_view)
REFERENCE_STRATEGY = "random"
SAVING_AT = 800
CELLS = ("cv", "strategy", "noise")
QUICK = {"folds": 2, "seeds": [0], "budgets": [20, 40, 60], "initial": 20, "step": 20, "reorder": 20, "rates": [0.1]}


# -- the measurements -------------------------------------------------------------------------------------------
def spread(values) -> list[float]:
    """[mean, sample std] rounded; std 0 for one value."""
    values = [float(v) for v in values]
    return [round(mean(values), 4), round(stdev(values), 4) if len(values) > 1 else 0.0]


def folds_of(labels: list[str], folds: int, seed: int = 0):
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members than n_splits": all units
        return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))


def cross_validation(texts: list[str], labels: list[str], folds: int) -> dict:
    departments = sorted(set(labels))
    runs = []
    for fold, (train, test) in enumerate(folds_of(labels, folds)):
        train_x, train_y = [texts[i] for i in train], [labels[i] for i in train]
        test_x, test_y = [texts[i] for i in test], [labels[i] for i in test]
        instant = score_split(train_x, test_x, train_y, test_y, departments)
        started = time.perf_counter()
        reference = classification_report(test_y, baseline(train_x, train_y, test_x))
        runs.append({"fold": fold, "train": len(train), "test": len(test), "instant": instant,
                     "reference": {"accuracy": reference["accuracy"], "macro_f1": reference["macro_f1"],
                                   "fit_seconds": round(time.perf_counter() - started, 2)}})
        print(f"  cv fold {fold}: instant {instant['accuracy']:.4f} ({instant['method']}, {instant['refit_seconds']} s), "
              f"reference {reference['accuracy']:.4f}", flush=True)
    return {"status": "ok", "folds": folds, "runs": runs,
            "instant": {k: spread(r["instant"][k] for r in runs) for k in ("accuracy", "macro_f1")},
            "reference": {k: spread(r["reference"][k] for r in runs) for k in ("accuracy", "macro_f1")},
            "ece_before": spread(r["instant"]["ece_fixed"] for r in runs),
            "ece_after": spread(r["instant"]["ece_fitted"] for r in runs)}


def strategy_replay(texts: list[str], labels: list[str], folds: int, seeds: list[int], budgets: list[int], initial: int,
                    step: int, reorder: int, strategy: str = DEFAULT_STRATEGY) -> dict:
    train, test = folds_of(labels, folds)[0]
    pool = Tickets([texts[i] for i in train], [labels[i] for i in train])
    evaluation = Tickets([texts[i] for i in test], [labels[i] for i in test])
    fitting = [b for b in budgets if b <= len(pool)]
    if not fitting:
        return not_run(f"pool of {len(pool)} rows < every budget")
    schedule = Schedule(initial, step, max(fitting), reorder)
    points = simulate(pool, evaluation, sorted(set(labels)), [REFERENCE_STRATEGY, strategy], seeds, schedule)
    return with_savings({"status": "ok", "pool": len(pool), "eval": len(evaluation), "seeds": seeds,
                         "schedule": schedule.checkpoints(), "reorder": schedule.reorder, "default": strategy,
                         "reference": REFERENCE_STRATEGY, "points": [asdict(p) for p in points]}, budgets)


def with_savings(cell: dict, budgets: list[int]) -> dict:
    """The replay's points with the default against random order at each budget (mean curves over the seeds)."""
    points = [CurvePoint(**p) for p in cell["points"]]
    at_budget = {}
    for budget in budgets:
        if budget > cell["pool"]:
            at_budget[str(budget)] = not_run(f"pool of {cell['pool']} rows < {budget}")
            continue
        within = [p for p in points if p.labels <= budget]
        comparison, interval = compare_to_random(mean_curves(within)), saving_interval(within)
        at_budget[str(budget)] = {"status": "ok", **{name: {"accuracy": [row["final_accuracy"], row["final_accuracy_std"]],
                                                            "macro_f1": [row["final_macro_f1"], row["final_macro_f1_std"]],
                                                            "labels_to_reach_random": row["labels_to_reach_random_final_accuracy"],
                                                            "saving_percent": row["label_saving_percent"],
                                                            "saving_interval": interval[name]}
                                                     for name, row in comparison.items()}}
    return {**{k: v for k, v in cell.items() if k != "points"}, "budgets": at_budget, "points": cell["points"]}


def same_replay_other_seeds(kept: dict | None, new: dict) -> bool:
    """Whether two strategy cells are one replay run in parts, split by seed (to share the cores of a machine)."""
    same = ("pool", "eval", "schedule", "reorder", "default", "reference")
    return (kept is not None and kept.get("status") == new.get("status") == "ok" and all(kept.get(k) == new.get(k) for k in same)
            and not set(kept["seeds"]) & set(new["seeds"]))


def join_seeds(kept: dict, new: dict) -> dict:
    """One strategy cell from two parts of the same replay, as if one process had run all their seeds. Its savings
    are the parts' until ``merge`` recomputes them once from all the points (a bootstrap per join was work thrown away)."""
    parts = (kept, new)
    return {**new, "seeds": sorted(seed for part in parts for seed in part["seeds"]),
            "seconds": round(sum(part.get("seconds", 0) for part in parts), 1), "budgets": {**kept["budgets"], **new["budgets"]},
            "points": [point for part in parts for point in part["points"]]}


def noise_ranking(rows: list[dict], name: str, rates: list[float], seeds: list[int]) -> dict:
    runs = []
    for rate in rates:
        for seed in seeds:
            runs.append(noise.measure(name, rows, rate, seed))
            print(f"  noise {rate:.0%} seed {seed}: ours {runs[-1][DEFAULT_RANKING]:.3f}, reference {runs[-1][noise.REFERENCE]:.3f}",
                  flush=True)
    return {"status": "ok", "ours": DEFAULT_RANKING, "folds": noise.FOLDS, "runs": runs,
            "rates": {str(rate): {"k": [r["errors"] for r in runs if r["rate"] == rate][0],
                                  "ours": spread(r[DEFAULT_RANKING] for r in runs if r["rate"] == rate),
                                  "reference": spread(r[noise.REFERENCE] for r in runs if r["rate"] == rate)} for rate in rates}}


def not_run(reason: str) -> dict:
    return {"status": "not run", "reason": reason}


# -- rows and the table -----------------------------------------------------------------------------------------
def row_specs(paths: list[Path], min_per_label: int) -> list[tuple[str, Path, int]]:
    """(row id, file, minimum rows per unit): k = min_per_label and all units; one row when they are the same."""
    specs = []
    for path in paths:
        counts = Counter(json.loads(line)["label"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        name = path.parent.name or path.stem
        if min(counts.values()) < min_per_label:
            specs.append((f"{name}-k{min_per_label}", path, min_per_label))
        specs.append((f"{name}-all", path, 1))
    return specs


def fmt(pair, digits: int = 3) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


REASONS: list[str] = []  # the table's footnotes: why a cell was not run


def gap(reason: str) -> str:
    if reason not in REASONS:
        REASONS.append(reason)
    return f"not run [{REASONS.index(reason) + 1}]"


def cell(part: dict | None, render) -> str:
    if part is None:
        return gap("not measured in this run")
    if part.get("status") != "ok":
        return gap(part.get("reason", "unknown"))
    return render(part)


def strategy_cell(part: dict, budget: str) -> str:
    at = part["budgets"].get(budget)
    if at is None or at.get("status") != "ok":
        return gap(at["reason"] if at else f"this row's replay was run with --budgets up to {max(map(int, part['budgets']))} only")
    ours, ref = at[part["default"]]["accuracy"], at[REFERENCE_STRATEGY]["accuracy"]  # a run's own default
    return f"{fmt(ours)} vs {fmt(ref)} ({100 * (ours[0] - ref[0]):+.1f})"


def saving_cell(part: dict) -> str:
    at = part["budgets"].get(str(SAVING_AT))
    if at is None or at.get("status") != "ok":
        return gap(at["reason"] if at else f"{SAVING_AT} not a budget of this run")
    ours, ref = at[part["default"]], at[REFERENCE_STRATEGY]
    low, high = ours.get("saving_interval") or (None, None)
    spread = f"; {percent(low)} to {percent(high)} over resampled seeds"
    if ours["saving_percent"] is None:
        return f"none: never stays at random's {at[REFERENCE_STRATEGY]['accuracy'][0]:.3f}{spread}"
    return f"{ours['saving_percent']:.1f} % ({ours['labels_to_reach_random']} vs {ref['labels_to_reach_random']} labels{spread})"


def noise_cell(part: dict, rate: str) -> str:
    at = part["rates"].get(rate)
    if at is None:
        return gap("rate not in this run")
    return f"{fmt(at['ours'])} vs {fmt(at['reference'])} (K = {at['k']})"


def table(result: dict) -> str:
    budgets = [str(b) for b in result["config"]["budgets"]]
    rates = [str(r) for r in result["config"]["rates"]]
    measured = "default" if result["config"].get("default_strategy", DEFAULT_STRATEGY) == DEFAULT_STRATEGY else result["config"]["default_strategy"]
    header = (["row", "rows, units", "instant acc", "reference acc", "instant macro-F1", "reference macro-F1"]
              + [f"{measured} vs random acc @ {b}" for b in budgets] + [f"labels saved @ {SAVING_AT}"]
              + [f"noise P@K {float(r):.0%}: ours vs reference" for r in rates] + ["ECE before → after"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    REASONS.clear()
    for row in result["rows"]:
        cv, strat, nz = row.get("cv"), row.get("strategy"), row.get("noise")
        cells = [row["id"], f"{row['rows']}, {row['units']}",
                 cell(cv, lambda c: fmt(c["instant"]["accuracy"])), cell(cv, lambda c: fmt(c["reference"]["accuracy"])),
                 cell(cv, lambda c: fmt(c["instant"]["macro_f1"])), cell(cv, lambda c: fmt(c["reference"]["macro_f1"]))]
        cells += [cell(strat, lambda s: strategy_cell(s, b)) for b in budgets] + [cell(strat, saving_cell)]
        cells += [cell(nz, lambda n: noise_cell(n, r)) for r in rates]
        cells.append(cell(cv, lambda c: f"{fmt(c['ece_before'])} → {fmt(c['ece_after'])}"))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"[{i}] not run: {reason}" for i, reason in enumerate(REASONS, start=1)]
    return "\n".join(lines + ([""] + notes if notes else []))


# -- command line -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA, metavar="PATH",
                        help="labelled JSONL files with text and label (default: the Shanghai, Dalian and TipDM dev sets under ../shared/data)")
    parser.add_argument("--min-per-label", type=int, default=20, metavar="K", help="the k of the 'k = K' rows (default: %(default)s)")
    parser.add_argument("--rows", nargs="+", metavar="ROW",
                        help="measure only these row ids (e.g. dalian_gov-k20 tipdm2020c-all; default: every row)")
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS), help="measurements to run (default: all)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="ROW:CELL",
                        help="leave out one measurement of one row, e.g. shanghai_xinfang-all:strategy; printed as 'not run'")
    parser.add_argument("--folds", type=int, default=5,
                        help="cross-validation folds; the first fold is also the replay's pool/eval split (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="replay seeds and noise seeds (default: %(default)s)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[400, 800, 1600], help="label budgets of the replay (default: %(default)s)")
    parser.add_argument("--initial", type=int, default=100, help="labels every replay starts from: a seeded random batch, the default's first "
                        "typical picks (default: %(default)s)")
    parser.add_argument("--step", type=int, default=50, help="labels between two scored refits; every budget must be a "
                        "checkpoint, initial + a multiple of step (default: %(default)s)")
    parser.add_argument("--reorder", type=int, default=Settings().queue_reorder_every_n_labels,
                        help="labels between two orderings of the queue by the strategy, as the service's QUEUE_REORDER_EVERY_N_LABELS "
                        "(default: its default, %(default)s)")
    parser.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=STRATEGIES, metavar="NAME",
                        help="the query strategy the strategy cell replays against random order, from: "
                             f"{', '.join(STRATEGIES)} (default: the service's, %(default)s)")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.10], help="label-noise rates (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK} (for tests and tiny files)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="processes at once: each row's cells, and each replay seed, run as a `python -m bench.learning` of its "
                             "own (files and logs in OUT's folder under OUT_parts/), merged into --out as --from-json merges; "
                             "the same numbers as one process, in a fraction of the wall time on a machine with N cores (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/learning.json"), help="JSON written after every cell (default: %(default)s)")
    parser.add_argument("--from-json", type=Path, nargs="+", metavar="PATH",
                        help="measure nothing: merge the rows of these earlier --out files (later files win per cell; the same replay's "
                             "other seeds are joined), print the table, write --out")
    return parser


def merge(paths: list[Path]) -> dict:
    merged: dict = {}
    rows: dict[str, dict] = {}
    for path in paths:
        result = json.loads(path.read_text(encoding="utf-8"))
        sources = [*merged.get("sources", []), {"file": str(path), "command": result.get("command"), "config": result.get("config"),
                                                 "started_utc": result.get("started_utc"), "wall_seconds": result.get("wall_seconds")}]
        config = {**merged.get("config", {}), **result["config"]}
        for key in ("budgets", "rates"):  # every budget and rate some file measured gets a column
            config[key] = sorted({*merged.get("config", {}).get(key, []), *result["config"][key]})
        per_run = ("rows", "sources", "command", "started_utc", "wall_seconds", "host")  # kept per source, not merged
        merged = {**merged, **{k: v for k, v in result.items() if k not in per_run}, "config": config, "sources": sources}
        for row in result["rows"]:
            kept = rows.setdefault(row["id"], {})
            if (row.get("strategy") or {}).get("status") == "ok" and "reorder" not in row["strategy"]:  # written before cells recorded --reorder
                row = {**row, "strategy": {**row["strategy"], "reorder": result["config"].get("reorder")}}
            if row.get("strategy") and same_replay_other_seeds(kept.get("strategy"), row["strategy"]):
                row = {**row, "strategy": join_seeds(kept["strategy"], row["strategy"])}
            kept.update({k: v for k, v in row.items() if v is not None and (k not in CELLS or v.get("status") == "ok" or k not in kept)})
    for row in rows.values():  # from the points, so that a file written before a change in how savings are measured re-renders
        cell = row.get("strategy")
        if cell and cell.get("status") == "ok":
            row["strategy"] = with_savings(cell, [int(budget) for budget in cell["budgets"]])
    merged["rows"] = list(rows.values())
    return merged


def parts(args, specs, skips) -> list[tuple[str, str, list[str]]]:
    """The processes of a --jobs run, as (name, row, arguments): a row's cell each, a replay one a seed, the replays first
    (the longest); every one with the run's own options, so each measures exactly what one process would."""
    common = ["--data", *map(str, args.data), "--min-per-label", str(args.min_per_label), "--folds", str(args.folds),
              "--budgets", *map(str, args.budgets), "--initial", str(args.initial), "--step", str(args.step),
              "--reorder", str(args.reorder), "--strategy", args.strategy, "--rates", *map(str, args.rates),
              *(["--quick"] if args.quick else [])]
    found = []
    for name in sorted(args.cells, key=lambda cell: cell != "strategy"):
        for row_id, _, _ in specs:
            skipped = (row_id, name) in skips
            seed_sets = [[seed] for seed in args.seeds] if name == "strategy" and not skipped else [args.seeds]
            for seeds in seed_sets:
                part = f"{row_id}_{name}" + (f"_s{seeds[0]}" if len(seed_sets) > 1 else "")
                found.append((part, row_id, [*common, "--rows", row_id, "--cells", name, "--seeds", *map(str, seeds),
                                     *(["--skip", f"{row_id}:{name}"] if skipped else [])]))
    return found


def run_in_parts(args, specs, skips, result: dict, started: float) -> int:
    """--jobs: run ``parts`` N at a time, then merge their files in the rows' order (``merge``)."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    # the parts import this repository wherever the run was started from (its relative paths stay the caller's)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}
    folder = args.out.parent / f"{args.out.stem}_parts"
    folder.mkdir(parents=True, exist_ok=True)

    def run(part: tuple[str, str, list[str]]) -> tuple[str, int]:
        name, _, arguments = part
        with open(folder / f"{name}.log", "w", encoding="utf-8") as log:
            return name, subprocess.run([sys.executable, "-m", "bench.learning", *arguments, "--out", str(folder / f"{name}.json")],
                                        stdout=log, stderr=subprocess.STDOUT, env=env).returncode

    todo = parts(args, specs, skips)
    with ThreadPoolExecutor(args.jobs) as pool:
        codes = dict(tqdm(pool.map(run, todo), total=len(todo), unit="part", desc=f"{args.jobs} processes"))
    failed = [name for name, code in codes.items() if code]
    for name in failed:
        print(f"error: part {name} failed; see {folder / (name + '.log')}", file=sys.stderr)
    order = {row_id: i for i, (row_id, _, _) in enumerate(specs)}
    done = sorted((order[row_id], name) for name, row_id, _ in todo if name not in failed)
    merged = merge([folder / f"{name}.json" for _, name in done])
    result = {**result, "rows": merged["rows"], "sources": merged["sources"], "jobs": args.jobs,
              "wall_seconds": round(time.perf_counter() - started, 1)}
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    print(table(result))
    print(f"\nwall time {result['wall_seconds']} s, {args.jobs} processes at once; written to {args.out}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        result = {"command": "python -m bench.learning " + " ".join(argv if argv is not None else sys.argv[1:]), **merge(args.from_json)}
        args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
        print(table(result))
        return 0
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    bad = [b for b in args.budgets if b < args.initial or (b - args.initial) % args.step]
    if bad:
        print(f"error: budgets {bad} are not checkpoints of --initial {args.initial} --step {args.step}", file=sys.stderr)
        return 2
    skips = {tuple(s.split(":", 1)) for s in args.skip}
    specs = [s for s in row_specs(args.data, args.min_per_label) if not args.rows or s[0] in args.rows]
    started = time.perf_counter()
    config = {k: getattr(args, k) for k in ("folds", "seeds", "budgets", "initial", "step", "reorder", "rates", "min_per_label", "quick")}
    result = {"command": "python -m bench.learning " + " ".join(argv if argv is not None else sys.argv[1:]),
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
              "config": {**config, "data": [str(p) for p in args.data], "default_strategy": args.strategy,
                         "reference_strategy": REFERENCE_STRATEGY, "noise_ranking": DEFAULT_RANKING}, "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1:
        return run_in_parts(args, specs, skips, result, started)
    for row_id, path, k in specs:
        texts, labels = load(path, k)
        rows = noise.load(path, k)
        row = {"id": row_id, "data": str(path), "min_per_label": k, "rows": len(texts), "units": len(set(labels))}
        result["rows"].append(row)
        print(f"{row_id}: {len(texts)} rows, {len(set(labels))} units", flush=True)
        for name in CELLS:
            if name not in args.cells:
                row[name] = None
                continue
            if (row_id, name) in skips:
                row[name] = not_run("skipped with --skip: too dear for this run on a shared 2-core CPU")
                continue
            cell_started = time.perf_counter()
            if name == "cv":
                row[name] = cross_validation(texts, labels, args.folds)
            elif name == "strategy":
                row[name] = strategy_replay(texts, labels, args.folds, args.seeds, args.budgets, args.initial, args.step, args.reorder,
                                           args.strategy)
            else:
                row[name] = noise_ranking(rows, row_id, args.rates, args.seeds)
            row[name]["seconds"] = round(time.perf_counter() - cell_started, 1)
            result["wall_seconds"] = round(time.perf_counter() - started, 1)
            args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
            print(f"  {name}: {row[name]['status']} in {row[name]['seconds']} s", flush=True)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    print(table(result))
    print(f"\nwall time {result['wall_seconds']} s; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
