"""Which model answers each project's /predict: one line per Label Studio project, one LLM base for them all.

Every project has its own label space (read from its labeling config), its own instant model and its own LLM
version: a request for project A is answered from A's model and A's departments only, and a config change in A
touches nothing of B. Nothing is fitted in a request: a new or changed config is prepared in the background (the
catalog's duties give a sensible model in well under a second; the full refit on the project's labels runs as a
job in its own process, ``learning/refit.py``), and a request that arrives before its project is ready waits a
moment, then gets a clear 503 saying so.

The serving classifier of a line is one reference, swapped atomically: a request holds the model it started with,
so a hot swap never mixes two versions in one answer. The registry in the store is the truth: every few seconds
each line serves what the store says serves (a promotion by a training job or a refit, a rollback from the CLI,
another replica's work). The 4-bit base model is loaded once; each project's promoted LoRA adapter is loaded beside
it under its own name and evicted, least recently used first, when the adapters exceed ADAPTER_CACHE_MB.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from backend.batching import BatchingClassifier, ClassifierClosed
from core.classifier import Classifier, TicketPrediction, summarize
from core.evaluation import evaluate
from core.jobs import ModelKind
from core.labeling import LabelConfigError, LabelSpace, parse_label_config
from core.settings import Settings
from core.store import Store, Version
from learning import refit

log = logging.getLogger(__name__)

INSTANT, LLM = ModelKind.INSTANT, ModelKind.LLM
ONLINE_MAX_PENDING = 1000  # labels the serving model takes in by online updates at one go; more wait for the refit


class ModelPreparing(RuntimeError):
    """The project's model for its labeling config is being prepared in the background; ask again shortly."""


class TooManyProjects(RuntimeError):
    """A request names a project beyond MAX_PROJECTS: each project costs a model, so their number is bounded."""


@dataclass
class ProjectLine:
    """One project's models. `ready` is set once `instant` can answer for `space`."""

    project_id: int
    space: LabelSpace
    instant: Classifier | None = None
    llm: Classifier | None = None
    llm_version: str | None = None  # the LLM version the store says this project serves (its adapter may be evicted)
    state: str = "preparing"
    note: str = ""
    ready: threading.Event = field(default_factory=threading.Event)
    learnt_seq: int = 0  # the project's labels up to this sequence number are in the serving instant model
    online_labels: int = 0  # of them, taken in by online updates since its fit
    learning: threading.Lock = field(default_factory=threading.Lock)

    @property
    def serving(self) -> Classifier | None:
        llm = self.llm
        # The LLM's prompt lists the departments: one built for another list must never answer.
        return llm if llm is not None and llm.departments == self.space.departments else self.instant

    def describe(self) -> dict:
        serving = self.serving
        return {"project": self.project_id, "state": self.state, "departments": len(self.space.departments),
                "serving_version": serving.version if serving is not None and self.ready.is_set() else None,
                "instant_version": self.instant.version if self.instant is not None else None,
                "online_labels": self.online_labels,
                "llm_version": self.llm_version, **({"note": self.note} if self.note else {})}


class AdapterCache:
    """LoRA adapters loaded beside the base model, least recently used first out when over the byte budget."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._loaded: OrderedDict[str, int] = OrderedDict()

    def touch(self, name: str) -> None:
        if name in self._loaded:
            self._loaded.move_to_end(name)

    def add(self, name: str, size: int) -> list[str]:
        """Record `name`; returns the adapters to evict so the rest fit the budget (never the one just added)."""
        self._loaded[name] = size
        self._loaded.move_to_end(name)
        evicted = []
        while sum(self._loaded.values()) > self.budget and len(self._loaded) > 1:
            oldest = next(iter(self._loaded))
            del self._loaded[oldest]
            evicted.append(oldest)
        return evicted

    def discard(self, name: str) -> None:
        self._loaded.pop(name, None)

    def names(self) -> list[str]:
        return list(self._loaded)

    def total_bytes(self) -> int:
        return sum(self._loaded.values())


def adapter_name(project_id: int, version: str) -> str:
    return f"p{project_id}-{version}"


class ModelManager:
    def __init__(self, store: Store, default_space: LabelSpace, settings: Settings):
        self.store = store
        self.settings = settings
        self.default_space = default_space
        self._lines: dict[int, ProjectLine] = {}
        self._lines_lock = threading.Lock()
        # Two threads preparing a project (a line replaced by a new config while it was preparing) would both name
        # their catalog version instant-1 and collide on disk; naming, fitting and registering go one at a time.
        self._register_lock = threading.Lock()
        self._engine = None
        self._llm_lock = threading.RLock()
        self._adapters = AdapterCache(settings.adapter_cache_mb * 2**20)
        self.llm_state: dict = {"state": "loading" if settings.base_model else "off"}
        self.refit_requested = lambda project_id: None  # set by the service: queue a full refit of a project

    # -- lines ----------------------------------------------------------------------------------------------
    def line(self, project_id: int) -> ProjectLine:
        with self._lines_lock:
            line = self._lines.get(project_id)
            if line is None:
                self._check_room()
                line = self._lines[project_id] = ProjectLine(project_id, self._remembered_space(project_id))
                self._prepare_soon(line)
            return line

    def _check_room(self) -> None:
        if len(self._lines) >= self.settings.max_projects + 1:  # the default project does not count
            raise TooManyProjects(f"this backend already serves {self.settings.max_projects} projects (MAX_PROJECTS)")

    def lines(self) -> list[ProjectLine]:
        with self._lines_lock:
            return list(self._lines.values())

    def _remembered_space(self, project_id: int) -> LabelSpace:
        project = self.store.project(project_id)
        if project is not None and project.label_config:
            try:
                return parse_label_config(project.label_config)
            except LabelConfigError:
                log.warning("project %d: the remembered labeling config no longer parses; using LABEL_CONFIG", project_id)
        return self.default_space

    def configure(self, project_id: int, space: LabelSpace, config: str) -> bool:
        """The project's labeling config as Label Studio sent it. A new department list prepares the project's
        model again, in the background; other projects are not touched. Returns whether the departments changed."""
        with self._lines_lock:
            if project_id not in self._lines:
                self._check_room()
        project = self.store.project(project_id)
        if project is None or project.label_config != config or project.departments != space.departments:
            self.store.remember_project(project_id, config, space.departments)
        with self._lines_lock:
            line = self._lines.get(project_id)
            if line is not None and line.space.departments == space.departments:
                line.space = space  # the same departments under other control names: nothing to refit
                return False
            self._lines[project_id] = line = ProjectLine(project_id, space)
            self._prepare_soon(line)
        log.info("project %d: labeling config with %d departments; preparing its model", project_id, len(space.departments))
        return True

    def _prepare_soon(self, line: ProjectLine) -> None:
        threading.Thread(target=self._prepare, args=(line,), name=f"prepare-{line.project_id}", daemon=True).start()

    def _prepare(self, line: ProjectLine) -> None:
        """Serve the project's persisted instant model when it was fitted for these departments, else the catalog's
        prototypes (fitted here: one document per department); then queue the full refit if labels are newer."""
        try:
            with self._lines_lock:
                if self._lines.get(line.project_id) is not line:  # replaced by a newer config before it started
                    return
            clf = self._load_instant(line.project_id, line.space)
            if clf is None:
                clf = self._fit_catalog_prototypes(line)
                line.note = "serving the catalog's prototypes until the refit on this project's labels finishes"
            self._serve_instant(line, clf)
            if self._engine is not None:
                self.follow_llm(line)
            line.state = "ready"
            line.ready.set()
            fitted_on = self.store.get_version(line.project_id, clf.version)
            if fitted_on is None or fitted_on.data.get("project_seq", 0) < self.store.project_seq(line.project_id):
                self.refit_requested(line.project_id)
        except Exception as exc:
            log.exception("project %d: the model could not be prepared", line.project_id)
            line.state, line.note = "failed", f"{type(exc).__name__}: {exc}"

    def _fit_catalog_prototypes(self, line: ProjectLine) -> Classifier:
        with self._register_lock:
            version = refit.next_version_name(self.store, line.project_id)
            clf, metrics = refit.fit_version(self.store, line.project_id, version, line.space.departments,
                                             refit.seed_texts(self.settings, line.project_id), self.settings, labels=[])
            refit.register(self.store, self.settings, line.project_id, clf, metrics, parent=None, promote=True)
        return clf

    def _load_instant(self, project_id: int, space: LabelSpace) -> Classifier | None:
        version = self.store.serving_version(project_id, INSTANT)
        if version is None or version.data.get("departments_hash") != refit.departments_hash(space.departments):
            return None
        try:
            return refit.load(self.settings, project_id, version.name)
        except Exception as exc:  # a missing or unreadable file: the catalog prototypes serve, a refit follows
            log.warning("project %d: the saved instant model %s could not be loaded (%s)", project_id, version.name, exc)
            return None

    # -- answering --------------------------------------------------------------------------------------------
    def space(self, project_id: int) -> LabelSpace:
        return self.line(project_id).space

    def serving_version(self, project_id: int) -> str | None:
        line = self.line(project_id)
        serving = line.serving
        return serving.version if serving is not None and line.ready.is_set() else None

    def predict(self, project_id: int, texts: Sequence[str]) -> tuple[str, list[TicketPrediction]]:
        line = self.line(project_id)
        if not line.ready.wait(self.settings.prepare_wait_seconds):
            raise ModelPreparing(f"the model for project {project_id}'s labeling config ({len(line.space.departments)} departments)"
                                 f" is being prepared{': ' + line.note if line.state == 'failed' else ''}; ask again in a few seconds")
        if line.llm is None and line.llm_version is not None and self._engine is not None:
            self.activate_llm(project_id, self.store.get_version(project_id, line.llm_version))  # evicted: back on demand
        for _ in range(3):
            clf = line.serving
            if clf is line.llm:
                self._adapters.touch(adapter_name(project_id, clf.version))
            try:
                return clf.version, summarize(clf.predict_proba(list(texts)), clf.departments, k=self.settings.suggestions_top_k)
            except ClassifierClosed:  # swapped out between taking it and asking it: ask the new one
                continue
        raise RuntimeError("the serving model kept changing during one request")

    def _serve_instant(self, line: ProjectLine, clf: Classifier) -> None:
        version = self.store.get_version(line.project_id, clf.version)
        with line.learning:
            line.instant, line.online_labels = clf, 0
            line.learnt_seq = version.data.get("project_seq", 0) if version is not None else 0
        self.learn(line.project_id)  # labels that arrived during its fit

    def learn(self, project_id: int) -> None:
        """New gold labels of the project: the serving instant model takes them in at once where it can (an online
        update, ``update``; milliseconds), until the full refit the service queues replaces it. Past
        ONLINE_MAX_PENDING labels (a history import, a long-stopped replica) only the refit takes them in."""
        line = self.line(project_id)
        clf = line.instant
        if clf is None or not hasattr(clf, "update"):
            return
        with line.learning:  # one catch-up at a time: every label is taken in once
            if line.instant is not clf or self.store.count_labels(project_id, line.learnt_seq, at_most=ONLINE_MAX_PENDING + 1) > ONLINE_MAX_PENDING:
                return
            labels = self.store.labels(project_id, since_seq=line.learnt_seq)
            if labels:
                line.online_labels += clf.update([l.text for l in labels], [l.department for l in labels])
                line.learnt_seq = labels[-1].seq

    # -- following the registry (promotions, rollbacks, other replicas) ---------------------------------------
    def follow_registry(self) -> None:
        for line in self.lines():
            if not line.ready.is_set():
                continue
            wanted = self.store.serving_version(line.project_id, INSTANT)
            current = line.instant
            if wanted is not None and current is not None and wanted.name != current.version and \
                    wanted.data.get("departments_hash") == refit.departments_hash(line.space.departments):
                self._serve_instant(line, refit.load(self.settings, line.project_id, wanted.name))
                line.note = ""
                log.info("project %d: now serving instant model %s (was %s)", line.project_id, wanted.name, current.version)
            else:
                self.learn(line.project_id)  # labels another replica stored, or a pull from Label Studio
            if self._engine is not None:
                self.follow_llm(line)

    # -- LLM: one base model, an adapter per project -----------------------------------------------------------
    def load_llm(self) -> None:
        """Load BASE_MODEL (minutes for a 7B) once for every project. Runs in the background; the instant models
        answer meanwhile, and keep answering if this fails."""
        try:
            from training.llm_scorer import LlmEngine
            from training.loading import load_model

            started = time.perf_counter()
            model, tokenizer = load_model(self.settings.base_model, self.settings.max_seq_length, self.settings.training_device)
            self._engine = LlmEngine(model, tokenizer, self.settings.max_seq_length)
            self.llm_state = {"state": "ready", "load_seconds": round(time.perf_counter() - started, 1)}
            for line in self.lines():
                if line.ready.is_set():
                    self.follow_llm(line)
        except Exception as exc:
            log.exception("the LLM could not be loaded; the instant models keep serving")
            self.llm_state = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}

    def follow_llm(self, line: ProjectLine) -> None:
        """Serve the project's LLM version from the registry (its first one is the base model, or ADAPTER). A line
        whose adapter was evicted stays on its instant model until a request asks for it (`predict`)."""
        version = self.store.serving_version(line.project_id, LLM) or self._register_initial_llm_version(line.project_id)
        llm = line.llm
        if llm is None and line.llm_version == version.name:
            return
        if llm is None or llm.version != version.name or llm.departments != line.space.departments:
            self.activate_llm(line.project_id, version)

    def _register_initial_llm_version(self, project_id: int) -> Version:
        name, path = ("lora-0", self.settings.adapter) if self.settings.adapter else ("llm-base", None)
        version = self.store.add_version(project_id, name, LLM, status="candidate", path=path,
                                         data={"base_model": self.settings.base_model}, note="initial version")
        self.store.promote_version(project_id, name)
        return version

    def _adapter_path(self, version: Version) -> str:
        """Adapters load only from their project's MODEL_DIR/projects/<id>/versions or the configured ADAPTER: a
        registry entry pointing elsewhere (an edited database, a path with '..') is refused rather than followed."""
        path = self.settings.model_path(version.path).resolve()
        home = self.settings.project_dir(version.project_id) / "versions"
        allowed = [home.resolve()] + ([Path(self.settings.adapter).resolve()] if self.settings.adapter else [])
        if not any(path == root or root in path.parents for root in allowed):
            raise ValueError(f"version {version.name} points at {version.path}, outside {home}; refusing to load it")
        return str(path)

    def _load_adapter(self, project_id: int, version: Version) -> str | None:
        if not version.path:
            return None
        name = adapter_name(project_id, version.name)
        if name not in self._engine.adapters():
            path = self._adapter_path(version)
            self._engine.load_adapter(path, name)
            size = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
            for evicted in self._adapters.add(name, size):
                self._evict(evicted)
        else:
            self._adapters.touch(name)
        return name

    def _evict(self, name: str) -> None:
        """An idle project's adapter leaves the GPU; its line falls back to the instant model until it is asked
        for again (`ensure_llm`)."""
        for line in self.lines():
            llm = line.llm
            if llm is not None and adapter_name(line.project_id, llm.version) == name:
                line.llm = None
                llm.close()
        self._engine.drop_adapter(name)
        log.info("adapter %s evicted (ADAPTER_CACHE_MB=%d)", name, self.settings.adapter_cache_mb)

    def activate_llm(self, project_id: int, version: Version) -> None:
        """Serve `version` for the project (hot swap: requests in flight finish on the old one); score it on the
        project's frozen split the first time."""
        from training.llm_scorer import LlmScorer

        line = self.line(project_id)
        with self._llm_lock:
            adapter = self._load_adapter(project_id, version)
            scorer = LlmScorer(self._engine, version.name, line.space.departments, batch_size=self.settings.predict_batch_size,
                               adapter=adapter)
            clf = BatchingClassifier(scorer, self.settings.predict_batch_size)
            previous, line.llm, line.llm_version = line.llm, clf, version.name
            if previous is not None:
                previous.close()  # its batching thread and cached prompt prefix go with it
                old = adapter_name(project_id, previous.version)
                if previous.version != clf.version and old in self._engine.adapters():
                    self._adapters.discard(old)
                    self._engine.drop_adapter(old)
            log.info("project %d: now serving %s", project_id, version.name)
        if not version.metrics:  # scored once, beside the requests it now answers
            threading.Thread(target=self._score_llm_version, args=(project_id, version.name, clf), daemon=True,
                             name=f"score-{project_id}-{version.name}").start()

    def _score_llm_version(self, project_id: int, name: str, clf: Classifier) -> None:
        try:
            self.store.update_version(project_id, name, metrics=evaluate(clf, self.store.labels(project_id, split="eval"),
                                                                           self.settings.auto_routing()))
        except Exception:  # swapped out (closed) before it finished, or the store refused: scored next time
            log.warning("project %d: %s could not be scored on the frozen split", project_id, name, exc_info=True)

    def adapter_state(self) -> dict:
        return {"loaded": self._adapters.names(), "bytes": self._adapters.total_bytes(), "budget_mb": self.settings.adapter_cache_mb}
