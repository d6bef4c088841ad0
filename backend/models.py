"""Which model answers /predict, keeping the instant model fresh, and bringing the LLM in when one is configured.

The serving classifier is one reference, swapped atomically: a request holds the model it started with, so a
hot swap never mixes two versions in one answer and never drops a request. The instant model refits from the
gold labels whenever they change (coalesced) and is scored on the frozen evaluation split each time. With
BASE_MODEL set, the LLM loads in the background and takes over once loaded; until then, or if it cannot load,
the instant model serves.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from annotation_config.catalog import Catalog
from backend.batching import BatchingClassifier, ClassifierClosed
from core.classifier import Classifier, TicketPrediction, summarize
from core.evaluation import evaluate
from core.jobs import ModelKind
from core.labeling import LabelSpace
from core.settings import Settings
from core.store import Store, Version
from learning.instant_model import fit_on_labels

log = logging.getLogger(__name__)

INSTANT, LLM = ModelKind.INSTANT, ModelKind.LLM


def departments_hash(departments: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(departments).encode("utf-8", "surrogatepass")).hexdigest()[:16]


class ModelManager:
    def __init__(self, store: Store, catalog: Catalog, space: LabelSpace, settings: Settings):
        self.store = store
        self.catalog = catalog
        self.settings = settings
        self._space = space
        self._serving: Classifier | None = None
        self._instant: Classifier | None = None
        self._instant_key: tuple[int, tuple[str, ...]] | None = None  # (label_seq, departments) it was fitted on
        self._llm: Classifier | None = None
        self._engine = None
        self._fit_lock = threading.Lock()
        self._llm_lock = threading.Lock()
        self.llm_state: dict = {"state": "loading" if settings.base_model else "off"}
        self.last_fit_seconds: float | None = None

    # -- what serves ----------------------------------------------------------------------------------------
    @property
    def space(self) -> LabelSpace:
        return self._space

    @property
    def serving_version(self) -> str | None:
        clf = self._serving
        return clf.version if clf is not None else None

    def serving(self) -> Classifier:
        if self._serving is None:
            self.refit_instant()
        return self._serving

    def swap(self, clf: Classifier) -> None:
        previous, self._serving = self._serving, clf
        if previous is None or previous.version != clf.version:
            log.info("now serving %s (was %s)", clf.version, previous.version if previous else "nothing")

    def predict(self, texts: Sequence[str], space: LabelSpace) -> tuple[str, list[TicketPrediction]]:
        if space.departments != self._space.departments:
            self.adopt(space)
        for _ in range(3):
            clf = self.serving()
            if clf.departments != space.departments:
                # Built for another department list (the config changed while it loads): rather than suggest a
                # department the project does not have, answer with the instant model, always fitted to the config.
                clf = self._instant
            try:
                return clf.version, summarize(clf.predict_proba(list(texts)), clf.departments, k=self.settings.suggestions_top_k)
            except ClassifierClosed:  # swapped out between taking it and asking it: ask the new one
                continue
        raise RuntimeError("the serving model kept changing during one request")

    # -- label space ----------------------------------------------------------------------------------------
    def adopt(self, space: LabelSpace) -> None:
        """Switch to a project's labeling config (another department list): refit the instant model for it and
        give the LLM the new list (its prompt and prefix cache follow)."""
        with self._fit_lock:
            changed = space.departments != self._space.departments
            self._space = space
        if not changed:
            return
        log.info("labeling config now has %d departments; refitting the instant model", len(space.departments))
        self.refit_instant()
        if self._llm is not None:
            self.activate_llm(self.store.serving_version(LLM))

    # -- instant model --------------------------------------------------------------------------------------
    def refit_instant(self) -> Classifier:
        """Choose the instant method on the frozen evaluation split, refit it on every label, register the
        version with the held-out scores and, if no LLM serves, swap it in. Serialised: concurrent calls queue,
        never fit in parallel."""
        with self._fit_lock:
            space = self._space
            seq = self.store.label_seq()
            previous = self._instant
            if previous is not None and self._instant_key == (seq, space.departments):
                return previous
            started = time.perf_counter()
            version = self.instant_version_name(seq, space)
            clf, metrics = fit_on_labels(version, space.departments, self.store.labels(), self.catalog.seed_texts(),
                                         self.settings.max_text_chars)
            self.last_fit_seconds = time.perf_counter() - started
            self.store.add_version(version, INSTANT, status="serving", parent=previous.version if previous else None,
                                   data={"label_seq": seq, "train_labels": metrics.pop("train_labels"), "labels": metrics.pop("labels"),
                                         "departments": len(space.departments), "departments_hash": departments_hash(space.departments),
                                         "fit_seconds": round(self.last_fit_seconds, 3)},
                                   metrics=metrics)
            self.store.promote_version(version)
            self._instant, self._instant_key = clf, (seq, space.departments)
            if self._llm is None:
                self.swap(clf)
            log.info("instant model %s (%s): eval accuracy %s macro-F1 %s (n=%d), %.2f s", version,
                     clf.method, metrics.get("accuracy"), metrics.get("macro_f1"), metrics.get("n", 0),
                     self.last_fit_seconds)
            return clf

    def instant_version_name(self, seq: int, space: LabelSpace) -> str:
        """Same labels and departments give the same name across restarts, so Label Studio does not re-predict.
        (The department list, not the config's XML text: Label Studio may hand back the same config reformatted.)"""
        wanted = departments_hash(space.departments)
        for version in reversed(self.store.versions(INSTANT)):
            if version.data.get("label_seq") == seq and version.data.get("departments_hash") == wanted:
                return version.name
        return f"{INSTANT}-{len(self.store.versions(INSTANT)) + 1}"

    # -- LLM --------------------------------------------------------------------------------------------------
    @property
    def llm_version(self) -> str | None:
        clf = self._llm
        return clf.version if clf is not None else None

    def load_llm(self) -> None:
        """Load BASE_MODEL (minutes for a 7B) and serve its current version. Runs in the background; the
        instant model answers meanwhile, and keeps answering if this fails."""
        try:
            from training.llm_scorer import LlmEngine
            from training.loading import load_model

            started = time.perf_counter()
            model, tokenizer = load_model(self.settings.base_model, self.settings.max_seq_length, self.settings.training_device)
            self._engine = LlmEngine(model, tokenizer, self.settings.max_seq_length)
            version = self.store.serving_version(LLM) or self._register_initial_llm_version()
            self.activate_llm(version)
            self.llm_state = {"state": "ready", "version": version.name, "load_seconds": round(time.perf_counter() - started, 1)}
        except Exception as exc:
            log.exception("the LLM could not be loaded; the instant model keeps serving")
            self.llm_state = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}

    def _register_initial_llm_version(self) -> Version:
        name, path = ("lora-0", self.settings.adapter) if self.settings.adapter else ("llm-base", None)
        version = self.store.add_version(name, LLM, status="candidate", path=path,
                                         data={"base_model": self.settings.base_model}, note="initial version")
        self.store.promote_version(name)
        return version

    def llm_classifier(self, version: Version, space: LabelSpace | None = None) -> Classifier:
        """A scorer for `version` (its adapter loaded into the shared engine) over the current departments."""
        from training.llm_scorer import LlmScorer

        if version.path and version.name not in self._engine.adapters():
            self._engine.load_adapter(self._adapter_path(version), version.name)
        scorer = LlmScorer(self._engine, version.name, (space or self._space).departments,
                           batch_size=self.settings.predict_batch_size, adapter=version.name if version.path else None)
        return BatchingClassifier(scorer, self.settings.predict_batch_size)

    def _adapter_path(self, version: Version) -> str:
        """Adapters load only from MODEL_DIR/versions or the configured ADAPTER: a registry entry pointing elsewhere
        (an edited database, a path with '..') is refused rather than followed."""
        path = Path(version.path).resolve()
        allowed = [self.settings.versions_dir.resolve()] + ([Path(self.settings.adapter).resolve()] if self.settings.adapter else [])
        if not any(path == root or root in path.parents for root in allowed):
            raise ValueError(f"version {version.name} points at {version.path}, outside {self.settings.versions_dir}; refusing to load it")
        return str(path)

    def activate_llm(self, version: Version) -> None:
        """Serve `version` (hot swap: requests in flight finish on the old one), score it on the frozen split."""
        with self._llm_lock:
            clf = self.llm_classifier(version)
            if not version.metrics:
                self.store.update_version(version.name, metrics=self._evaluate(clf))
            previous, self._llm = self._llm, clf
            self.swap(clf)
            if self.llm_state.get("state") == "ready":
                self.llm_state = {**self.llm_state, "version": clf.version}
            if previous is not None:
                previous.close()  # its batching thread and cached prompt prefix go with it
                if previous.version != clf.version:
                    self._engine.drop_adapter(previous.version)

    def _evaluate(self, clf: Classifier) -> dict:
        return evaluate(clf, self.store.labels(split="eval"))
