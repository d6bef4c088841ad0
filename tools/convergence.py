"""The stopping signal: is the model still improving with more labels, and are its answers still moving?

Two views, both from the store: the score of every model version on the frozen evaluation split against the
number of gold labels it had, and the share of tickets whose suggested department changed between the last two
versions that predicted the same tickets. When both flatten (a few points of macro-F1 per hundred labels, a few
percent churn), more labels of the same kind stop paying off: label the departments the quality report shows as
weak instead, or stop.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.jobs import ModelKind
from core.store import Store, StoreMissing, open_store

FLAT_F1_PER_100_LABELS = 0.01
STABLE_CHURN = 0.05


def convergence_report(store: Store, project_id: int) -> dict:
    """The stopping signal of one project's model line."""
    series = {}
    for kind in ModelKind:
        points = []
        for v in store.versions(project_id, kind):
            if v.metrics.get("accuracy") is None:
                continue
            points.append({"version": v.name, "status": v.status, "created_at": v.created_at, "labels": v.data.get("labels"),
                           "eval_n": v.metrics.get("n"), "accuracy": v.metrics["accuracy"], "macro_f1": v.metrics["macro_f1"]})
        series[kind] = points
    churn = _churn(store, project_id)
    slope = _recent_slope(series[ModelKind.INSTANT])
    return {"project": project_id, "series": series, "churn": churn, "instant_macro_f1_per_100_labels": slope,
            "advice": _advice(slope, churn)}


def _churn(store: Store, project_id: int) -> dict | None:
    versions = store.prediction_versions(project_id)
    if len(versions) < 2:
        return None
    older, newer = versions[-2], versions[-1]
    before = {p["task_id"]: p["department"] for p in store.predictions(project_id, model_version=older)}
    after = {p["task_id"]: p["department"] for p in store.predictions(project_id, model_version=newer)}
    common = before.keys() & after.keys()
    if not common:
        return {"from": older, "to": newer, "tickets": 0, "changed": 0, "share": None}
    changed = sum(before[k] != after[k] for k in common)
    return {"from": older, "to": newer, "tickets": len(common), "changed": changed, "share": round(changed / len(common), 4)}


def _recent_slope(points: list[dict], window: int = 4) -> float | None:
    """Macro-F1 gained per 100 labels over the last few versions (least squares)."""
    recent = [p for p in points if p["labels"]][-window:]
    if len(recent) < 2 or recent[-1]["labels"] == recent[0]["labels"]:
        return None
    xs, ys = [p["labels"] for p in recent], [p["macro_f1"] for p in recent]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    denominator = sum((x - mx) ** 2 for x in xs)
    return round(100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / denominator, 4) if denominator else None


def _advice(slope: float | None, churn: dict | None) -> str:
    if slope is None:
        return "not enough model versions with evaluation labels yet"
    share = churn["share"] if churn and churn["share"] is not None else None
    if slope < FLAT_F1_PER_100_LABELS and (share is None or share < STABLE_CHURN):
        return (f"converging: macro-F1 moves {slope:+.3f} per 100 labels" + (f" and {share:.0%} of suggestions changed" if share is not None else "")
                + "; more labels of the same kind pay off little — label weak departments or stop")
    return f"still improving: macro-F1 {slope:+.3f} per 100 labels" + (f", {share:.0%} of suggestions changed" if share is not None else "")


def plot_convergence(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for metric, ax in zip(("accuracy", "macro_f1"), axes):
        for kind, points in report["series"].items():
            points = [p for p in points if p["labels"]]
            if points:
                ax.plot([p["labels"] for p in points], [p[metric] for p in points], marker="o", label=kind)
        ax.set_title(f"{metric.replace('_', '-')} on the frozen evaluation split")
        ax.set_xlabel("gold labels")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(report["advice"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from core.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m backend convergence", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."),
                        help="folder for convergence[-PROJECT].json and .png (default: %(default)s)")
    parser.add_argument("--project", type=int, metavar="ID", help="only this Label Studio project (default: every project, one report each)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        store = open_store(settings, must_exist=True)
    except StoreMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    known = store.projects_with_versions()
    if args.project is not None and args.project not in known:
        print(f"error: project {args.project} has no model versions; projects with versions: {known or 'none'}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for project_id in [args.project] if args.project is not None else known:
        report = convergence_report(store, project_id)
        name = f"convergence-{project_id}"
        (args.out / f"{name}.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
        plot_convergence(report, args.out / f"{name}.png")
        print(f"project {project_id}: {report['advice']} ({args.out / name}.json, .png)")
    return 0
