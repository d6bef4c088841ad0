"""Which model answers /predict, and keeping the instant model fresh.

The serving classifier is one reference, swapped atomically: a request holds the model it started with, so a
hot swap never mixes two versions in one answer and never drops a request. The instant model refits from the
gold labels whenever they change (coalesced) and is scored on the frozen evaluation split each time.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Sequence

from annotation_config.catalog import Catalog
from backend.classifier import Classifier, TicketPrediction, summarize
from backend.evaluation import classification_report
from backend.instant_model import fit_instant_model
from backend.labeling import LabelSpace
from backend.store import Store

log = logging.getLogger(__name__)

INSTANT = "instant"


class ModelManager:
    def __init__(self, store: Store, catalog: Catalog, space: LabelSpace, max_text_chars: int):
        self.store = store
        self.catalog = catalog
        self.max_text_chars = max_text_chars
        self._space = space
        self._serving: Classifier | None = None
        self._instant: Classifier | None = None
        self._instant_key: tuple[int, tuple[str, ...]] | None = None  # (label_seq, departments) it was fitted on
        self._fit_lock = threading.Lock()
        self.last_fit_seconds: float | None = None

    # -- what serves ----------------------------------------------------------------------------------------
    @property
    def space(self) -> LabelSpace:
        return self._space

    def serving(self) -> Classifier:
        clf = self._serving
        if clf is None:
            self.refit_instant()
            clf = self._serving
        return clf

    @property
    def serving_version(self) -> str | None:
        clf = self._serving
        return clf.version if clf is not None else None

    @property
    def instant(self) -> Classifier | None:
        return self._instant

    def swap(self, clf: Classifier) -> None:
        previous, self._serving = self._serving, clf
        if previous is None or previous.version != clf.version:
            log.info("now serving %s (was %s)", clf.version, previous.version if previous else "nothing")

    def predict(self, texts: Sequence[str], space: LabelSpace) -> tuple[str, list[TicketPrediction]]:
        if space.departments != self._space.departments:
            self.adopt(space)
        clf = self.serving()
        if clf.departments != space.departments:
            # The serving model was built for another department list (an LLM adapter trained on an older
            # catalog): rather than suggesting a department the project does not have, answer with the
            # instant model, which is always fitted to the current labeling config.
            clf = self._instant
        return clf.version, summarize(clf.predict_proba(list(texts)), clf.departments)

    # -- label space ----------------------------------------------------------------------------------------
    def adopt(self, space: LabelSpace) -> None:
        """Switch to a project's labeling config (another department list): refit the instant model for it."""
        with self._fit_lock:
            if space.departments == self._space.departments:
                self._space = space
                return
            log.info("labeling config changed: %d -> %d departments; refitting the instant model",
                     len(self._space.departments), len(space.departments))
            self._space = space
        self.refit_instant()

    # -- instant model --------------------------------------------------------------------------------------
    def refit_instant(self) -> Classifier:
        """Choose the instant method on the frozen evaluation split, refit it on every label, register the
        version with the held-out scores and, if the instant model is what serves, swap it in. Serialised:
        concurrent calls queue, never fit in parallel."""
        with self._fit_lock:
            space = self._space
            seq = self.store.label_seq()
            previous = self._instant
            if previous is not None and self._instant_key == (seq, space.departments):
                return previous
            started = time.perf_counter()
            labels = [l for l in self.store.labels() if l.department in space.departments]
            train = [l for l in labels if l.split == "train"]
            seeds = {name: text for name, text in self.catalog.seed_texts().items() if name in space.departments}
            version = self.instant_version_name(seq, space)
            clf, report = fit_instant_model(
                version, space.departments,
                train=([l.text for l in train], [l.department for l in train]),
                all_labels=([l.text for l in labels], [l.department for l in labels]),
                seed_texts=seeds, evaluate=lambda candidate: self._evaluate(candidate, space),
                max_text_chars=self.max_text_chars)
            metrics = {**report[clf.method], "method": clf.method,
                       "methods": {m: {k: report[m].get(k) for k in ("accuracy", "macro_f1", "n")} for m in report if m != "chosen"}}
            self.last_fit_seconds = time.perf_counter() - started
            self.store.add_version(version, INSTANT, status="serving", parent=previous.version if previous else None,
                                   data={"label_seq": seq, "train_labels": len(train), "labels": len(labels), "departments": len(space.departments),
                                         "config_hash": space.config_hash, "fit_seconds": round(self.last_fit_seconds, 3)},
                                   metrics=metrics)
            self.store.promote_version(version)
            self._instant, self._instant_key = clf, (seq, space.departments)
            if self._serving is None or self._serving.version.startswith(INSTANT):
                self.swap(clf)
            log.info("instant model %s (%s): %d training labels, eval accuracy %s macro-F1 %s (n=%d), %.2f s", version,
                     clf.method, len(train), metrics.get("accuracy"), metrics.get("macro_f1"), metrics.get("n", 0),
                     self.last_fit_seconds)
            return clf

    def instant_version_name(self, seq: int, space: LabelSpace) -> str:
        """Same labels and config give the same name across restarts, so Label Studio does not re-predict."""
        for version in reversed(self.store.versions(INSTANT)):
            if version.data.get("label_seq") == seq and version.data.get("config_hash") == space.config_hash:
                return version.name
        return f"{INSTANT}-{len(self.store.versions(INSTANT)) + 1}"

    def evaluate(self, clf: Classifier) -> dict:
        return self._evaluate(clf, self._space)

    def _evaluate(self, clf: Classifier, space: LabelSpace) -> dict:
        held_out = [l for l in self.store.labels(split="eval") if l.department in space.departments]
        if not held_out:
            return classification_report([], [])
        dist = clf.predict_proba([l.text for l in held_out])
        predicted = [p.department for p in summarize(dist, clf.departments, k=1)]
        return classification_report([l.department for l in held_out], predicted)
