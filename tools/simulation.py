"""Replays an already labelled ticket set as if annotators had labelled it in the order a query strategy picks.

    python -m backend simulate --train train.jsonl --eval eval.jsonl --out out/simulation

Every strategy starts from the same seeded random batch of labels, except one that can choose before any model
exists (the default's typical picks, as the service's queue orders a project without labels). Then, until the budget is spent: the model is
fitted on the labels so far, scored on the separate evaluation file, asked for its distribution over the
remaining pool, and the strategy picks the next step of tickets, whose true labels are added. The learning curves
show how many labels each strategy needs for an accuracy; the summary says how many fewer than random order.
A replay is deterministic: the same files, options and seeds give the same learning_curve.csv, byte for byte.

The instant model is fitted exactly as the service fits it (a label store that freezes its own selection split,
``learning.instant_model.fit_on_labels``: the SVM, or before there are folds the serving method, kept unless the
other clearly leads it), with only the department names as catalog seeds.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from annotation_config.catalog import Catalog, Department
from annotation_config.labeling_config import render_labeling_config
from core.classifier import Classifier
from core.evaluation import classification_report
from core.jobs import JobKind, JobStatus, ModelKind, launch_worker
from core.labeling import parse_label_config
from core.settings import Settings, SettingsError
from core.store import Label, open_store
from learning.instant_model import fit_on_labels
from learning.strategies import DEFAULT, STRATEGIES, ColdStart, Pool, strategy

DEFAULT_STRATEGIES = ("random", DEFAULT, "least-confidence", "margin", "entropy", "balanced-margin")
REFERENCE = "random"
CSV_COLUMNS = ("strategy", "seed", "labels", "accuracy", "macro_f1")
TIMING_COLUMNS = ("strategy", "seed", "labels", "seconds")  # apart, so the learning curve itself is reproducible
PROJECT = 1  # the throwaway store holds one project


class SimulationInputError(ValueError):
    """An input file or option the simulation cannot use; the message says which and why."""


# -- input ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tickets:
    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def only(self, departments: set[str]) -> Tickets:
        keep = [i for i, label in enumerate(self.labels) if label in departments]
        return Tickets([self.texts[i] for i in keep], [self.labels[i] for i in keep])


def read_tickets(path: Path) -> Tickets:
    """A JSONL file of {"text": ..., "label": ...} rows ("department" instead of "label" too; other fields are ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SimulationInputError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    texts, labels = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SimulationInputError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        label = row.get("label", row.get("department")) if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(label, str):
            raise SimulationInputError(f"{path}, line {number}: every row needs the string fields 'text' and 'label' (or 'department')")
        texts.append(row["text"])
        labels.append(label)
    return Tickets(texts, labels)


def keep_frequent_departments(train: Tickets, evaluation: Tickets, min_per_label: int) -> tuple[Tickets, Tickets]:
    """Both files restricted to the departments with at least `min_per_label` tickets in the training file."""
    counts = Counter(train.labels)
    kept = {department for department, n in counts.items() if n >= min_per_label}
    return train.only(kept), evaluation.only(kept)


# -- models -----------------------------------------------------------------------------------------------------
class Learner(Protocol):
    def learn(self, texts: Sequence[str], labels: Sequence[str]) -> Classifier:
        """Add these gold labels to those learnt so far and return the model refitted on all of them."""

    def close(self) -> None: ...


class ThrowawayProject:
    """What the service keeps for a project, in a temporary MODEL_DIR: the label store (with its frozen
    selection split), a labeling config listing `departments`, and a catalog that knows only their names."""

    def __init__(self, departments: Sequence[str], settings: Settings):
        self._workdir = tempfile.TemporaryDirectory(prefix="simulation-")
        self.settings = settings.replace(model_dir=Path(self._workdir.name))
        self.catalog = Catalog(title="simulation", departments=tuple(Department(name=d) for d in departments))
        config = render_labeling_config(self.catalog)
        self.space = parse_label_config(config)
        self.store = open_store(self.settings)
        self.store.remember_project(PROJECT, config, self.space.departments)
        self._annotations = 0

    def annotate(self, texts: Sequence[str], labels: Sequence[str]) -> None:
        for text, label in zip(texts, labels):
            self._annotations += 1
            self.store.upsert_label(Label(annotation_id=self._annotations, project_id=PROJECT, task_id=self._annotations,
                                          text=text, department=label, source="simulation"))

    def close(self) -> None:
        self.store.close()
        self._workdir.cleanup()


class InstantModel:
    """The product's instant model, refitted on every new batch of labels as the service refits it."""

    def __init__(self, departments: Sequence[str]):
        self._project = ThrowawayProject(departments, Settings())
        self._serving_method: str | None = None

    def learn(self, texts: Sequence[str], labels: Sequence[str]) -> Classifier:
        project = self._project
        project.annotate(texts, labels)
        clf, _ = fit_on_labels(f"simulation-{project.store.label_seq()}", project.space.departments, project.store.labels(PROJECT),
                               project.catalog.seed_texts(), project.settings.max_text_chars, serving_method=self._serving_method)
        self._serving_method = clf.method
        return clf

    def close(self) -> None:
        self._project.close()


# ---- GPU only: nothing below this line runs on a CPU machine (main refuses --model llm without CUDA) ---------
def llm_prerequisites_missing() -> list[str]:
    """Why `--model llm` cannot run here; empty when it can."""
    missing = []
    if not Settings.from_env().base_model:
        missing.append("BASE_MODEL is not set (the local folder of the LLM to fine-tune)")
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        missing.append("torch sees no CUDA device: a fine-tuning round per checkpoint is only practical on a GPU "
                       "(use --model instant on a CPU)")
    return missing


# ---- GPU only: main refuses --model llm unless llm_prerequisites_missing() is empty ----------------------------
class LlmModel:
    """The LLM as the service fine-tunes it: every batch of labels is one training round, run like the service's
    job runner runs it (``python -m training.round --job N`` in its own process, settings in the environment):
    new labels plus replay, gated on the store's frozen split, continuing from the adapter last promoted. This
    process loads BASE_MODEL once per replay and hot-swaps to each promoted adapter to score."""

    def __init__(self, departments: Sequence[str]):
        from training.llm_scorer import LlmEngine
        from training.loading import load_model

        self._project = ThrowawayProject(departments, Settings.from_env())
        settings = self._project.settings
        model, tokenizer = load_model(settings.base_model, settings.max_seq_length, settings.training_device)
        self._engine = LlmEngine(model, tokenizer, settings.max_seq_length)

    def learn(self, texts: Sequence[str], labels: Sequence[str]) -> Classifier:
        from training.llm_scorer import LlmScorer

        project = self._project
        project.annotate(texts, labels)
        job, _ = project.store.request_job(JobKind.TRAIN, "active-learning simulation", PROJECT)
        launch_worker("training.round", ["--job", str(job.id)], {**os.environ, **project.settings.to_env()}).wait()
        job = project.store.get_job(job.id)
        if job.status == JobStatus.FAILED or not job.finished:
            raise RuntimeError(f"training round {job.id} failed: {job.error or 'the worker exited without finishing it'}")
        serving = project.store.serving_version(PROJECT, ModelKind.LLM)
        if serving.name not in self._engine.adapters():
            self._engine.load_adapter(str(project.settings.model_path(serving.path)), serving.name)
        return LlmScorer(self._engine, serving.name, project.space.departments,
                         batch_size=project.settings.predict_batch_size, adapter=serving.name)

    def close(self) -> None:
        self._project.close()
# ---- end of the GPU-only part ----------------------------------------------------------------------------------


MODELS: dict[str, Callable[[Sequence[str]], Learner]] = {ModelKind.INSTANT: InstantModel, ModelKind.LLM: LlmModel}


# -- the replay -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    initial: int
    step: int
    budget: int
    # Labels between two computations of the queue order; None: at every refit. The service refits on every label
    # but orders the queue only at pre-annotation, so scoring more often than re-ordering is what it does.
    reorder: int | None = None

    def checkpoints(self) -> list[int]:
        """Label counts at which the model is refitted and scored: after the initial batch, every step, the budget."""
        return [*range(self.initial, self.budget, self.step), self.budget]

    def reorders_at(self, labelled: int, ordered_at: int | None) -> bool:
        """Whether the queue is ordered again once `labelled` tickets have gold labels (last ordered at `ordered_at`)."""
        return ordered_at is None or labelled - ordered_at >= (self.reorder or self.step)


@dataclass(frozen=True)
class CurvePoint:
    strategy: str
    seed: int
    labels: int
    accuracy: float
    macro_f1: float
    seconds: float  # refitting the model on `labels` gold labels


def initial_batch(pool_size: int, size: int, seed: int) -> np.ndarray:
    # Its own stream of the seed: the batch is the same whichever strategy follows it.
    return np.random.default_rng([seed, 0]).choice(pool_size, size=size, replace=False)


def score(clf: Classifier, evaluation: Tickets) -> tuple[float, float]:
    """Accuracy and macro-F1 (over the departments of the evaluation file), as the service reports them."""
    probs = clf.predict_proba(evaluation.texts).probs
    report = classification_report(evaluation.labels, [clf.departments[i] for i in probs.argmax(axis=1)])
    return report["accuracy"], report["macro_f1"]


def replay(strategy_name: str, seed: int, pool: Tickets, evaluation: Tickets, model: Learner, schedule: Schedule,
           departments: int, on_refit: Callable[[], object] = lambda: None) -> list[CurvePoint]:
    """One learning curve: `strategy_name` choosing from `pool` (labels over `departments` units) after the seed's
    initial batch, or after its own first picks if it makes them without a model."""
    chooser = strategy(strategy_name)
    rng = np.random.default_rng([seed, 1])
    if isinstance(chooser, ColdStart):
        new = chooser.first(Pool(pool.texts, []), departments, rng)[: schedule.initial]
    else:
        new = initial_batch(len(pool), schedule.initial, seed)
    labelled, unlabelled = new, np.setdiff1d(np.arange(len(pool)), new)
    points: list[CurvePoint] = []
    clf, queue, ordered_at = None, None, None
    for count in schedule.checkpoints():
        if points:
            if schedule.reorders_at(len(labelled), ordered_at):
                texts = [pool.texts[i] for i in unlabelled]
                candidates = Pool(texts, [pool.texts[i] for i in labelled])
                queue, ordered_at = unlabelled[chooser.rank(clf.predict_proba(texts).probs, rng, len(labelled), candidates)], len(labelled)
            new, queue = queue[: count - len(labelled)], queue[count - len(labelled):]
            labelled, unlabelled = np.concatenate([labelled, new]), np.setdiff1d(unlabelled, new)
        started = time.perf_counter()
        clf = model.learn([pool.texts[i] for i in new], [pool.labels[i] for i in new])
        seconds = time.perf_counter() - started
        accuracy, macro_f1 = score(clf, evaluation)
        points.append(CurvePoint(strategy_name, seed, count, accuracy, macro_f1, round(seconds, 3)))
        on_refit()
    return points


def simulate(pool: Tickets, evaluation: Tickets, departments: Sequence[str], strategies: Sequence[str],
             seeds: Sequence[int], schedule: Schedule, model: str = "instant") -> list[CurvePoint]:
    from tqdm import tqdm

    points: list[CurvePoint] = []
    total = len(seeds) * len(strategies) * len(schedule.checkpoints())
    with tqdm(total=total, unit="refit", desc="simulating") as progress:
        for seed in seeds:
            for name in strategies:
                progress.set_postfix_str(f"{name}, seed {seed}")
                with closing(MODELS[model](departments)) as learner:
                    points += replay(name, seed, pool, evaluation, learner, schedule, len(departments), progress.update)
    return points


# -- results ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeanCurve:
    labels: list[int]
    accuracy: list[float]
    macro_f1: list[float]
    accuracy_std: list[float]  # over seeds (sample standard deviation; 0 for one seed)
    macro_f1_std: list[float]
    seeds: int


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def mean_curves(points: Sequence[CurvePoint]) -> dict[str, MeanCurve]:
    """Each strategy's curve averaged over seeds, in the order the strategies were run."""
    by_count: dict[str, dict[int, list[CurvePoint]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        by_count[p.strategy][p.labels].append(p)
    curves = {}
    for name, counts in by_count.items():
        labels = sorted(counts)
        accuracy = [[p.accuracy for p in counts[n]] for n in labels]
        macro_f1 = [[p.macro_f1 for p in counts[n]] for n in labels]
        curves[name] = MeanCurve(labels, [float(np.mean(a)) for a in accuracy], [float(np.mean(f)) for f in macro_f1],
                                 [_std(a) for a in accuracy], [_std(f) for f in macro_f1], seeds=len(counts[labels[-1]]))
    return curves


def labels_to_reach(curve: MeanCurve, accuracy: float) -> int | None:
    """The first label count from which the mean curve stays at or above `accuracy` to the end; None if it ends below.

    Not the first crossing: a noisy curve can touch the target early and fall back, and a strategy that ends
    below random order must not be reported as saving labels."""
    reached = None
    for n, a in zip(reversed(curve.labels), reversed(curve.accuracy)):
        if a < accuracy:
            break
        reached = n
    return reached


def compare_to_random(curves: dict[str, MeanCurve]) -> dict[str, dict]:
    """Final scores per strategy (mean and standard deviation over seeds), and how many labels it needs to reach
    random order's final mean accuracy for good.

    The saving is measured against the labels random order itself needs by the same rule (its mean curve can
    stay above its final value before the end)."""
    reference = curves.get(REFERENCE)
    target = reference.accuracy[-1] if reference else None
    reference_labels = labels_to_reach(reference, target) if reference else None
    out = {}
    for name, curve in curves.items():
        needed = labels_to_reach(curve, target) if reference else None
        out[name] = {
            "seeds": curve.seeds,
            "final_labels": curve.labels[-1],
            "final_accuracy": round(curve.accuracy[-1], 4),
            "final_accuracy_std": round(curve.accuracy_std[-1], 4),
            "final_macro_f1": round(curve.macro_f1[-1], 4),
            "final_macro_f1_std": round(curve.macro_f1_std[-1], 4),
            "labels_to_reach_random_final_accuracy": needed,
            "label_saving_percent": round(100 * (1 - needed / reference_labels), 1) if needed is not None else None,
        }
    return out


SAVING_RESAMPLES = 1000  # draws of the seeds behind a saving's interval


def saving_interval(points: Sequence[CurvePoint], resamples: int = SAVING_RESAMPLES) -> dict[str, list[float | None]]:
    """Each strategy's label saving (``compare_to_random``) over resamples of the seeds, drawn with replacement (a
    bootstrap, Efron & Tibshirani 1993): its 5th and 95th percentile, in percent. Every draw takes the same seeds for
    all strategies, so a strategy is always compared with random order on the seeds it ran with. None at an end means
    that in that share of the draws the strategy never stays at random's final accuracy. One seed gives its own
    saving at both ends. A saving reached by a lucky seed or two shows as a wide interval, not as the mean's number."""
    by_seed: dict[int, list[CurvePoint]] = defaultdict(list)
    for point in points:
        by_seed[point.seed].append(point)
    seeds = sorted(by_seed)
    rng = np.random.default_rng(0)  # the same points give the same interval
    savings: dict[str, list[float]] = defaultdict(list)
    for _ in range(resamples):
        drawn = [point for seed in rng.choice(seeds, len(seeds)) for point in by_seed[seed]]
        for name, row in compare_to_random(mean_curves(drawn)).items():
            saving = row["label_saving_percent"]
            savings[name].append(-np.inf if saving is None else saving)

    def end(values: list[float], percentile: float) -> float | None:
        value = float(np.percentile(values, percentile, method="lower" if percentile < 50 else "higher"))
        return None if value == -np.inf else round(value, 1)

    return {name: [end(values, 5), end(values, 95)] for name, values in savings.items()}


def _write_csv(rows: Sequence[CurvePoint], columns: Sequence[str], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(asdict(p) for p in rows)


def write_curve_csv(points: Sequence[CurvePoint], path: Path) -> None:
    _write_csv(points, CSV_COLUMNS, path)


def write_timing_csv(points: Sequence[CurvePoint], path: Path) -> None:
    _write_csv(points, TIMING_COLUMNS, path)


def plot_learning_curves(curves: dict[str, MeanCurve], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharex=True)
    for ax, metric, name in zip(axes, ("accuracy", "macro_f1"), ("accuracy", "macro-F1")):
        for strategy_name, curve in curves.items():
            baseline = strategy_name == REFERENCE  # drawn apart so every other line reads against it
            ax.plot(curve.labels, getattr(curve, metric), label=strategy_name, marker="." if not baseline else None,
                    color="black" if baseline else None, linestyle="--" if baseline else "-", linewidth=1.6)
        ax.set_title(f"{name} on the evaluation file")
        ax.set_xlabel("gold labels (initial batch + tickets picked by the strategy)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if REFERENCE in curves:
        axes[0].axhline(curves[REFERENCE].accuracy[-1], color="grey", linestyle=":", linewidth=1,
                        label="random order's final accuracy")
    axes[0].legend(loc="lower right", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def percent(saving: float | None) -> str:
    return "none" if saving is None else f"{saving:.1f} %"


def print_table(comparison: dict[str, dict]) -> None:
    print("\n| strategy | labels | accuracy (mean ± std over seeds) | macro-F1 | labels to reach random's final accuracy "
          "and stay there | saving | saving, 5-95 % over resampled seeds |\n|---|---|---|---|---|---|---|")
    for name, row in comparison.items():
        needed = row["labels_to_reach_random_final_accuracy"]
        low, high = row.get("label_saving_interval") or (None, None)
        print(f"| {name} | {row['final_labels']} | {row['final_accuracy']:.3f} ± {row['final_accuracy_std']:.3f} | "
              f"{row['final_macro_f1']:.3f} ± {row['final_macro_f1_std']:.3f} | {needed if needed is not None else 'not reached'} | "
              f"{percent(row['label_saving_percent'])} | {percent(low)} to {percent(high)} |")


# -- command line -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend simulate", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="writes into --out: learning_curve.csv (one row per strategy, seed and refit; the same for the same\n"
               "inputs), refit_seconds.csv (the time of each refit), learning_curve.png (accuracy and macro-F1\n"
               "against labels, mean over seeds) and summary.json (final scores, mean and std over seeds; labels\n"
               "from which the mean accuracy stays at random order's final mean accuracy; saving in percent, and its 5th and 95th\n"
               "percentile over resamples of the seeds).")
    parser.add_argument("--train", type=Path, required=True, metavar="PATH", help="labelled JSONL (text, label): the pool annotators label from")
    parser.add_argument("--eval", type=Path, required=True, metavar="PATH",
                        help="labelled JSONL (text, label) every refit is scored on; never labelled")
    parser.add_argument("--model", choices=sorted(MODELS), default="instant",
                        help="instant: the CPU instant model as the service fits it; llm: a fine-tuning round per "
                             "checkpoint, needs CUDA and BASE_MODEL (default: %(default)s)")
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(DEFAULT_STRATEGIES),
                        type=lambda name: DEFAULT if name == "default" else name, metavar="NAME",
                        help=f"query strategies to compare, from: {', '.join(STRATEGIES)}; 'default' is the service's "
                             f"queue order, {DEFAULT} (default: {' '.join(DEFAULT_STRATEGIES)})")
    parser.add_argument("--initial", type=int, default=20, metavar="N",
                        help="labels every strategy starts from: a seeded random batch, or the default's first typical "
                             "picks (default: %(default)s)")
    parser.add_argument("--step", type=int, default=50, metavar="N", help="labels between refits, each scored (default: %(default)s)")
    parser.add_argument("--reorder", type=int, metavar="N",
                        help="labels between two orderings of the queue by the strategy; annotators take the order's "
                             "next tickets in between, as they do between two pre-annotations in the service (default: --step)")
    parser.add_argument("--budget", type=int, metavar="N", help="stop at this many labels (default: the whole pool)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                        help="seeds for the initial batch and random order; one curve each, averaged in the plot (default: 0)")
    parser.add_argument("--min-per-label", type=int, default=1, metavar="N",
                        help="keep departments with at least this many tickets in --train, in both files (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("out/simulation"), metavar="DIR", help="output folder (default: %(default)s)")
    return parser


def _checked_schedule(args: argparse.Namespace, pool_size: int) -> Schedule:
    budget = pool_size if args.budget is None else args.budget
    if args.initial < 1 or args.step < 1 or (args.reorder is not None and args.reorder < 1):
        raise SimulationInputError("--initial, --step and --reorder must be at least 1")
    if not args.initial <= budget <= pool_size:
        raise SimulationInputError(f"need --initial ({args.initial}) <= --budget ({budget}) <= the {pool_size} tickets of the pool")
    return Schedule(args.initial, args.step, budget, args.reorder)


def run(args: argparse.Namespace) -> int:
    train, evaluation = keep_frequent_departments(read_tickets(args.train), read_tickets(args.eval), args.min_per_label)
    if not len(train):
        raise SimulationInputError(f"no department has at least --min-per-label {args.min_per_label} tickets in {args.train}")
    if not len(evaluation):
        raise SimulationInputError(f"no ticket of {args.eval} belongs to a department kept from {args.train} "
                                   f"(--min-per-label {args.min_per_label})")
    schedule = _checked_schedule(args, len(train))
    if args.model == "llm" and (missing := llm_prerequisites_missing()):
        raise SimulationInputError("--model llm cannot run here: " + "; ".join(missing))
    departments = sorted(set(train.labels) | set(evaluation.labels))
    print(f"{len(train)} tickets in the pool, {len(evaluation)} to evaluate on, {len(departments)} departments; "
          f"labels {', '.join(map(str, schedule.checkpoints()))}", file=sys.stderr)

    points = simulate(train, evaluation, departments, args.strategies, args.seeds, schedule, args.model)
    curves = mean_curves(points)
    comparison = compare_to_random(curves)
    for name, interval in saving_interval(points).items():
        comparison[name]["label_saving_interval"] = interval
    args.out.mkdir(parents=True, exist_ok=True)
    write_curve_csv(points, args.out / "learning_curve.csv")
    write_timing_csv(points, args.out / "refit_seconds.csv")
    plot_learning_curves(curves, args.out / "learning_curve.png",
                         f"Labelling order by query strategy: {args.model} model, {len(departments)} departments, pool of "
                         f"{len(train)} tickets, {len(evaluation)} evaluation tickets, mean over {len(args.seeds)} seed(s)")
    summary = {"train": str(args.train), "eval": str(args.eval), "model": args.model, "min_per_label": args.min_per_label,
               "departments": len(departments), "pool": len(train), "eval_tickets": len(evaluation),
               **asdict(schedule), "seeds": args.seeds, "reference": REFERENCE if REFERENCE in curves else None,
               "random_final_accuracy": comparison.get(REFERENCE, {}).get("final_accuracy"), "strategies": comparison}
    (args.out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    print_table(comparison)
    print(f"\nwritten to {args.out}/: learning_curve.csv, refit_seconds.csv, learning_curve.png, summary.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (SimulationInputError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
