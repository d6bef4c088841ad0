"""A full refit of one project's instant model, in its own process, as the service's refit runner starts it:

    python -m learning.refit --job 12          # MODEL_DIR, CATALOG... come from the environment

1. claim the job            mark it running, with this process's pid
2. read                     the project's departments, its frozen evaluation split and at most INSTANT_MAX_LABELS
                            training labels, newest per department (the store chooses them: ``training_sample``)
3. fit                      ``fit_on_labels``: the method chosen by cross-validation (the SVM once there are labels
                            enough for folds, before that the serving version's method, kept unless the other clearly
                            leads it), refitted on every label
4. save                     the model into MODEL_DIR/projects/<project>/instant/<version>/, written to a temporary
                            folder and renamed when complete
5. register                 the version with its scores; it serves unless ``keep_serving`` says the serving model
                            is better; old retired versions beyond INSTANT_VERSIONS_KEPT are pruned
The serving process follows the registry and loads the saved model: a refit, however long, never shares the
request process's interpreter (the GIL), and a start needs no refit. The service also calls ``fit_version`` and
``register`` itself for the catalog's prototypes (one document per department: instant).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
import pickle
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from annotation_config.catalog import load_catalog
from core.jobs import JobStatus, ModelKind, heartbeat, partial_dir, worker_id
from core.settings import Settings
from core.store import Store, StoredLabel, Version, open_store
from learning.instant_model import fit_on_labels

log = logging.getLogger("learning.refit")

MODEL_FILE = "model.pkl"


def departments_hash(departments: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(departments).encode("utf-8", "surrogatepass")).hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _catalog_seeds(path: Path) -> dict[str, str]:
    return load_catalog(path).seed_texts()


def seed_texts(settings: Settings, project_id: int) -> dict[str, str]:
    """What the project's catalog says of each department (name, aliases, duties): the instant model's first
    examples. Projects may share a catalog (PROJECT_CATALOGS) or use CATALOG."""
    return _catalog_seeds(settings.catalog_of(project_id))


def version_dir(settings: Settings, project_id: int, version: str) -> Path:
    return settings.project_dir(project_id) / "instant" / version


def next_version_name(store: Store, project_id: int) -> str:
    numbers = [int(v.name.split("-")[1]) for v in store.versions(project_id, ModelKind.INSTANT)
               if v.name.startswith("instant-") and v.name.split("-")[1].isdigit()]
    return f"instant-{max(numbers, default=0) + 1}"


def fit_version(store: Store, project_id: int, version: str, departments: Sequence[str], seed_texts: Mapping[str, str],
                settings: Settings, labels: Sequence[StoredLabel] | None = None, serving: Version | None = None):
    """(classifier, metrics) of the project's labels (or of `labels`), with what the registry records about it.
    Before there are labels enough for folds the `serving` version's method stays unless another is clearly better
    on the split; after, the SVM does (``fit_instant_model``)."""
    seq = store.project_seq(project_id) if labels is None else 0  # the catalog's prototypes have seen no label
    started = time.perf_counter()
    # the store picks the sample (at 10^6 labels the refit reads the 2 % it fits); the labels it holds are counted
    labels, stored = store.training_sample(project_id, departments, settings.instant_max_labels) if labels is None else (labels, None)
    clf, metrics = fit_on_labels(version, departments, labels, seed_texts, settings.max_text_chars,
                                 serving_method=serving.metrics.get("method") if serving else None,
                                 routing=settings.auto_routing(), max_train_labels=settings.instant_max_labels)
    fitted_from = metrics.pop("labels")
    metrics["data"] = {"project_seq": seq, "train_labels": metrics.pop("train_labels"), "labels": fitted_from if stored is None else stored,
                       "departments": len(departments), "departments_hash": departments_hash(departments),
                       "fit_seconds": round(time.perf_counter() - started, 3)}
    return clf, metrics


def save(clf, directory: Path) -> Path:
    """Write into a temporary folder, flush it, then rename: a crash mid-write leaves no half model."""
    partial = partial_dir(directory)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with open(partial / MODEL_FILE, "wb") as f:
            pickle.dump(clf, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(directory, ignore_errors=True)
        os.rename(partial, directory)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return directory


def load(settings: Settings, project_id: int, version: str):
    with open(version_dir(settings, project_id, version) / MODEL_FILE, "rb") as f:
        return pickle.load(f)


def register(store: Store, settings: Settings, project_id: int, clf, metrics: dict, parent: str | None, promote: bool,
             note: str | None = None) -> Version:
    """Save the model and add its version (serving at once with `promote`, else a candidate for the job to
    promote); retired versions beyond INSTANT_VERSIONS_KEPT leave the registry and the disk."""
    data = metrics.pop("data")
    save(clf, version_dir(settings, project_id, clf.version))
    version = store.add_version(project_id, clf.version, ModelKind.INSTANT, status="candidate", parent=parent,
                                path=settings.registry_path(version_dir(settings, project_id, clf.version)), data=data, metrics=metrics,
                                note=note)
    if promote:
        store.promote_version(project_id, clf.version)
    for pruned in store.prune_versions(project_id, ModelKind.INSTANT, settings.instant_versions_kept):
        shutil.rmtree(version_dir(settings, project_id, pruned), ignore_errors=True)
    return version


def run_refit(job_id: int, claimed_by: str, settings: Settings) -> str:
    store = open_store(settings)
    job = store.get_job(job_id)
    if not (job.claimed_by == claimed_by and job.status == JobStatus.RUNNING) and store.claim_job(job_id, job.kind, claimed_by) is None:
        raise RuntimeError(f"job {job_id} is {job.status} and claimed by {job.claimed_by}: not this worker's to run")
    with heartbeat(store, job_id, claimed_by):
        project_id = job.project_id
        store.update_job(job_id, pid=os.getpid(), label_seq=store.label_seq(), progress={"phase": "fitting"})
        project = store.project(project_id)
        if project is None or not project.departments:
            raise RuntimeError(f"project {project_id} has no labeling config yet")
        serving = store.serving_version(project_id, ModelKind.INSTANT)
        version = next_version_name(store, project_id)
        clf, metrics = fit_version(store, project_id, version, project.departments, seed_texts(settings, project_id), settings,
                                   serving=serving)
        registered = register(store, settings, project_id, clf, metrics, parent=serving.name if serving else None, promote=False)
        store.update_job(job_id, progress={"phase": "done", "labels": registered.data["labels"], "fit_seconds": registered.data["fit_seconds"]})
        promoted = store.promote_for_job(job_id, claimed_by, project_id, version)
    log.info("project %d: instant model %s (%s) on %d labels, eval macro-F1 %s, %.1f s%s", project_id, version, metrics.get("method"),
             registered.data["labels"], metrics.get("macro_f1"), registered.data["fit_seconds"], "" if promoted else " (job lost: not promoted)")
    return JobStatus.PROMOTED if promoted else JobStatus.FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m learning.refit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", type=int, required=True, help="id of the queued refit job in the store")
    parser.add_argument("--claimed-by", default=None, help="the runner that claimed the job (default: claim it here)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    claimed_by = args.claimed_by or worker_id()
    try:
        run_refit(args.job, claimed_by, settings)
    except Exception as exc:
        log.exception("refit job %d failed", args.job)
        open_store(settings).finish_job(args.job, claimed_by, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
