"""All configuration of the service, in one typed object read from environment variables.

Names follow Label Studio's ML-backend conventions where one exists (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY,
BASIC_AUTH_USER/BASIC_AUTH_PASS, MODEL_DIR, PORT, LOG_LEVEL); where Label Studio itself uses two names (its compose
files say BASIC_AUTH_USER, its ML-backend template ML_SERVER_BASIC_AUTH_USER), both are read.
``python -m backend settings`` prints both tables (the service's ``Settings`` and the fine-tuning worker's
``TrainingConfig``); the README's configuration table is the same text.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from annotation_config.catalog import DEFAULT_CATALOG, DEFAULT_LABELING_CONFIG


class SettingsError(ValueError):
    """An environment variable has a value the service cannot use."""


def setting(env: str, default, doc: str, aliases: tuple[str, ...] = ()):
    """A configuration field read from the environment variable `env`, or from one of its `aliases`."""
    return field(default=default, metadata={"env": env, "doc": doc, "aliases": aliases})


class EnvConfig:
    """Typed configuration from environment variables; subclasses are frozen dataclasses of `setting` fields."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides):
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            given = {name: environ[name] for name in (f.metadata["env"], *f.metadata["aliases"]) if environ.get(name)}
            if len(set(given.values())) > 1:
                raise SettingsError(f"{' and '.join(given)} are the same setting but differ; set one of them")
            if given:
                name, raw = next(iter(given.items()))
                values[f.name] = _convert(f, name, raw)
        values.update(overrides)
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        pass

    def to_env(self) -> dict[str, str]:
        """The environment that recreates this configuration in another process (a training worker)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.metadata["env"]] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def env_name(cls, name: str) -> str:
        return next(f.metadata["env"] for f in fields(cls) if f.name == name)

    @classmethod
    def describe(cls) -> str:
        """A Markdown table of every setting: variable, default, meaning."""
        lines = ["| variable | default | meaning |", "|---|---|---|"]
        for f in fields(cls):
            default = f.default if not isinstance(f.default, Path) else _relative(f.default)
            aliases = "".join(f"; also read from `{alias}`" for alias in f.metadata["aliases"])
            lines.append(f"| `{f.metadata['env']}` | `{default}` | {f.metadata['doc']}{aliases} |")
        return "\n".join(lines)


@dataclass(frozen=True)
class Settings(EnvConfig):
    # Label Studio connection
    label_studio_url: str = setting("LABEL_STUDIO_URL", "", "Label Studio base URL, e.g. http://127.0.0.1:8080; needed to pull annotations on START_TRAINING, reconcile, set the project's model_version and push predictions")
    label_studio_api_key: str = setting("LABEL_STUDIO_API_KEY", "", "Label Studio API key (legacy token or personal access token) used by the backend; never logged or stored")
    label_studio_timeout: float = setting("LABEL_STUDIO_TIMEOUT", 30.0, "seconds before a call to Label Studio counts as failed")
    label_studio_attempts: int = setting("LABEL_STUDIO_ATTEMPTS", 4, "tries per call to Label Studio, with exponential back-off (0.5 s, 1 s, 2 s...) between them")
    # Service
    host: str = setting("HOST", "127.0.0.1", "interface to listen on; 127.0.0.1 keeps the backend private, 0.0.0.0 exposes it (then set BASIC_AUTH_*)")
    port: int = setting("PORT", 9090, "HTTP port")
    threads: int = setting("THREADS", 8, "gunicorn worker threads (one worker process holds the model; threads keep /health and /webhook fast while /predict runs)")
    log_level: str = setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    basic_auth_user: str = setting("BASIC_AUTH_USER", "", "when set with BASIC_AUTH_PASS, every request needs HTTP Basic auth (configure the same pair in Label Studio's model settings)", aliases=("ML_SERVER_BASIC_AUTH_USER",))
    basic_auth_pass: str = setting("BASIC_AUTH_PASS", "", "password for BASIC_AUTH_USER", aliases=("ML_SERVER_BASIC_AUTH_PASS",))
    public_health: bool = setting("PUBLIC_HEALTH", True, "leave GET /health open without auth (for load balancers); other endpoints still need it")
    max_request_bytes: int = setting("MAX_REQUEST_BYTES", 20_000_000, "larger request bodies are refused with 413")
    max_tasks_per_predict: int = setting("MAX_TASKS_PER_PREDICT", 5000, "a /predict call with more tasks is refused with 413")
    max_text_chars: int = setting("MAX_TEXT_CHARS", 20_000, "ticket texts longer than this are cut for prediction and refused as gold labels (422)")
    max_projects: int = setting("MAX_PROJECTS", 500, "Label Studio projects one backend serves (each has its own models); requests naming more are refused with 422")
    max_choices: int = setting("MAX_CHOICES", 2000, "a labeling config with more choices (departments) than this is refused with 422")
    prepare_wait_seconds: float = setting("PREPARE_WAIT_SECONDS", 10.0, "how long /predict waits for a project whose labeling config is new to get its model before answering 503 (retry shortly); /setup waits at most 2 s")
    # Storage and models
    model_dir: Path = setting("MODEL_DIR", Path("models"), "where the label store (SQLite), model versions and job logs live; with several replicas, a volume they share")
    queue_url: str = setting("QUEUE_URL", "", "empty: training rounds run in a worker process of this service; redis://host:port/db: they are queued for RQ workers (python -m training.worker) on any machine that shares STORE_URL and MODEL_DIR")
    store_url: str = setting("STORE_URL", "", "the label store: empty for the SQLite file under MODEL_DIR (one machine), or postgresql://user:password@host:port/database for several replicas and workers")
    labeling_config: Path = setting("LABEL_CONFIG", DEFAULT_LABELING_CONFIG, "labeling config used before Label Studio sends one (the project's config wins once it arrives)")
    catalog: Path = setting("CATALOG", DEFAULT_CATALOG, "department catalog; its duties texts seed the instant model")
    project_catalogs: str = setting("PROJECT_CATALOGS", "", "catalogs of particular projects, e.g. '3=catalogs/pudong.json,4=catalogs/pudong.json' (districts sharing one); other projects use CATALOG")
    base_model: str = setting("BASE_MODEL", "", "local path of the LLM (a Qwen2-family causal LM such as DeepSeek-R1-Distill-Qwen-7B); empty: the instant model serves")
    adapter: str = setting("ADAPTER", "", "optional LoRA adapter directory to start from")
    max_seq_length: int = setting("MAX_SEQ_LENGTH", 896, "LLM context length used for scoring and training")
    predict_batch_size: int = setting("PREDICT_BATCH_SIZE", 32, "tickets per LLM forward pass; concurrent /predict calls are merged up to this")
    adapter_cache_mb: int = setting("ADAPTER_CACHE_MB", 3000, "LoRA adapters of all projects kept beside the base model, in MiB; the least recently used is evicted beyond this and reloaded on demand (an r=64 adapter of the 7B is about 320 MiB)")
    suggestions_top_k: int = setting("SUGGESTIONS_TOP_K", 3, "suggestions per ticket shown to annotators (the top one preselected, each one hotkey away: 1, 2, 3...)")
    # Learning loop
    eval_fraction: float = setting("EVAL_FRACTION", 0.2, "share of each department's gold texts frozen into the evaluation split")
    eval_max_per_department: int = setting("EVAL_MAX_PER_DEPARTMENT", 40, "a department's evaluation split stops growing at this many texts, so the split the gate scores on stays the same size however many labels arrive")
    instant_refit_seconds: float = setting("INSTANT_REFIT_SECONDS", 2.0, "a project's instant model is refitted (in a worker process) at most this often while labels arrive")
    instant_max_labels: int = setting("INSTANT_MAX_LABELS", 20_000, "an instant-model refit fits at most this many training labels, round-robin over the departments, newest first (an uncapped refit grows ~N^1.35: 320 s at 10^5 labels on two cores, 38 s with this cap); the evaluation split is always used whole")
    instant_versions_kept: int = setting("INSTANT_VERSIONS_KEPT", 20, "retired instant-model versions kept per project (older ones are pruned from the registry and the disk)")
    queue_reorder_every_n_labels: int = setting("QUEUE_REORDER_EVERY_N_LABELS", 100, "a project pre-annotated before is pre-annotated again once a refit that learnt this many new gold labels serves it, so its queue order (queue_priority) follows the model; the active-learning replays order the queue this often (0: only on request)")
    train_every_n_labels: int = setting("TRAIN_EVERY_N_LABELS", 200, "queue an LLM fine-tuning job after this many new gold labels (0: only on START_TRAINING)")
    job_lost_after_seconds: float = setting("JOB_LOST_AFTER_SECONDS", 120.0, "a running job whose worker has not said it is alive for this long (killed, its machine gone) is failed and queued again")
    reconcile_seconds: float = setting("RECONCILE_SECONDS", 600.0, "pull all annotations from Label Studio this often to recover lost webhooks (0: only on START_TRAINING)")
    # Auto-routing (POST /route)
    auto_route: bool = setting("AUTO_ROUTE", True, "POST /route may dispatch a ticket without a person when the model is sure enough; false: every ticket goes to review")
    auto_route_precision: float = setting("AUTO_ROUTE_PRECISION", 0.95, "the precision the centre is promised for auto-routed tickets: each model version's thresholds are proven to reach it on gold labels the version never trained on")
    auto_route_confidence: float = setting("AUTO_ROUTE_CONFIDENCE", 0.95, "the confidence of that promise (thresholds by an exact Clopper-Pearson test, audits by a confidence sequence)")
    auto_route_min_department_rows: int = setting("AUTO_ROUTE_MIN_DEPARTMENT_ROWS", 100, "a department predicted on at least this many calibration rows gets its own threshold; the others share one (0: one threshold for all)")
    audit_rate: float = setting("AUDIT_RATE", 0.05, "share of auto-routed tickets also sent to a person to check; their answers measure each version's realised precision and stop auto-routing when it is shown below the target")
    max_route_tickets: int = setting("MAX_ROUTE_TICKETS", 1000, "a /route call with more tickets is refused with 413")
    training_device: str = setting("TRAINING_DEVICE", "auto", "where the LLM runs: auto (CUDA if present), cuda or cpu")

    def validate(self) -> None:
        if self.queue_url and not self.queue_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(f"QUEUE_URL must be a redis:// URL (or empty to train in this service), got {self.queue_url[:40]!r}")
        if self.queue_url and not self.store_url:
            raise SettingsError("QUEUE_URL needs STORE_URL: workers on other machines must read the same store (PostgreSQL)")
        if self.store_url and not self.store_url.startswith(("postgresql://", "postgres://")):
            raise SettingsError(f"STORE_URL must be a postgresql:// URL (or empty for SQLite under MODEL_DIR), got {self.store_url[:40]!r}")
        if not 0 < self.port < 65536:
            raise SettingsError(f"PORT must be between 1 and 65535, got {self.port}")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if not 0 < self.eval_fraction < 0.9:
            raise SettingsError(f"EVAL_FRACTION must be in (0, 0.9), got {self.eval_fraction}")
        for name in ("auto_route_precision", "auto_route_confidence"):
            if not 0 < getattr(self, name) < 1:
                raise SettingsError(f"{self.env_name(name)} must be strictly between 0 and 1, got {getattr(self, name)}")
        if not 0 <= self.audit_rate <= 1 or self.auto_route_min_department_rows < 0:
            raise SettingsError("AUDIT_RATE must be between 0 and 1 and AUTO_ROUTE_MIN_DEPARTMENT_ROWS >= 0")
        for project, path in self._project_catalogs().items():
            if not path.is_file():
                raise SettingsError(f"PROJECT_CATALOGS: the catalog of project {project}, {path}, does not exist")
        if self.training_device not in {"auto", "cuda", "cpu"}:
            raise SettingsError(f"TRAINING_DEVICE must be auto, cuda or cpu, got {self.training_device!r}")
        for name in ("threads", "max_request_bytes", "max_tasks_per_predict", "max_text_chars", "predict_batch_size", "max_seq_length",
                     "label_studio_timeout", "label_studio_attempts", "max_projects", "max_choices", "eval_max_per_department", "adapter_cache_mb",
                     "suggestions_top_k", "instant_versions_kept", "job_lost_after_seconds", "max_route_tickets", "instant_max_labels"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{self.env_name(name)} must be positive")

    def auto_routing(self):
        """The centre's promise and audit rate, as the routing statistics take them (core.routing)."""
        from core.routing import AutoRouting

        return AutoRouting(self.auto_route_precision, self.auto_route_confidence, self.audit_rate, self.auto_route_min_department_rows)

    def catalog_of(self, project_id: int) -> Path:
        """The catalog whose duties seed a project's instant model: its own (PROJECT_CATALOGS) or CATALOG."""
        return self._project_catalogs().get(project_id, self.catalog)

    def _project_catalogs(self) -> dict[int, Path]:
        pairs = {}
        for item in filter(None, (part.strip() for part in self.project_catalogs.split(","))):
            project, _, path = item.partition("=")
            if not (project.strip().isascii() and project.strip().isdigit() and path.strip()):
                raise SettingsError(f"PROJECT_CATALOGS: {item!r} is not PROJECT_ID=PATH")
            pairs[int(project)] = Path(path.strip())
        return pairs

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user)

    @property
    def store_location(self) -> str:
        """STORE_URL, else the SQLite file under MODEL_DIR."""
        return self.store_url or str(self.model_dir / "store.sqlite3")

    def model_path(self, path: str | Path) -> Path:
        """A path the registry records, on this machine: relative ones are under MODEL_DIR, so replicas and workers
        may mount the shared volume wherever they like."""
        return Path(path) if Path(path).is_absolute() else self.model_dir / path

    def registry_path(self, path: Path) -> str:
        """What the registry records for a file under MODEL_DIR: the path relative to it."""
        try:
            return str(Path(path).relative_to(self.model_dir))
        except ValueError:
            return str(path)

    def project_dir(self, project_id: int) -> Path:
        """A project's models: instant/<version>/ and versions/<lora-N>/ (LoRA adapters)."""
        return self.model_dir / "projects" / str(project_id)


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _convert(f: dataclasses.Field, env: str, raw: str):
    kind = f.type if isinstance(f.type, type) else {"str": str, "int": int, "float": float, "bool": bool, "Path": Path}[f.type]
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        return kind(raw.strip()) if kind is not str else raw
    except ValueError:
        raise SettingsError(f"{env}={raw!r} is not a valid {kind.__name__}") from None


# -- fine-tuning: the original recipe's hyper-parameters; 16 rows per optimizer step, split 8 x 2 where the GPU has
# room (the same training as the recipe's 2 x 8, measured: BENCHMARKS.md) ------------------------------------------


@dataclass(frozen=True)
class TrainingConfig(EnvConfig):
    lora_r: int = setting("TRAIN_LORA_R", 64, "LoRA rank")
    lora_alpha: int = setting("TRAIN_LORA_ALPHA", 64, "LoRA alpha")
    lora_dropout: float = setting("TRAIN_LORA_DROPOUT", 0.05, "LoRA dropout")
    target_modules: str = setting("TRAIN_TARGET_MODULES", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "modules that get LoRA adapters")
    learning_rate: float = setting("TRAIN_LEARNING_RATE", 5e-5, "peak learning rate")
    lr_scheduler: str = setting("TRAIN_LR_SCHEDULER", "cosine", "learning-rate schedule after warm-up")
    warmup_steps: int = setting("TRAIN_WARMUP_STEPS", 5, "linear warm-up steps")
    weight_decay: float = setting("TRAIN_WEIGHT_DECAY", 0.01, "AdamW weight decay")
    optimizer: str = setting("TRAIN_OPTIMIZER", "adamw_8bit", "optimizer on CUDA (8-bit AdamW from bitsandbytes); the CPU path uses adamw_torch")
    micro_batch: int = setting("TRAIN_MICRO_BATCH", 0, "sequences per forward pass; 0 (auto): 8 on a GPU with at least 11 GiB free when the round starts (the same training as the recipe's 2 x 8 and 1.5-2.0x faster on an H200 (BENCHMARKS.md section 2), for 1.9 GiB more), else the recipe's 2")
    grad_accumulation: int = setting("TRAIN_GRAD_ACCUMULATION", 0, "micro-batches per optimizer step; 0 (auto): 16 rows per step, i.e. 16 / TRAIN_MICRO_BATCH")
    pad_to_multiple_of: int = setting("TRAIN_PAD_TO_MULTIPLE_OF", 64, "batches hold tickets of similar length, padded to the longest rounded up to this (a few shapes for the compiled kernels); MAX_SEQ_LENGTH pads every row to full length, as the original recipe did")
    epochs: float = setting("TRAIN_EPOCHS", 1.0, "passes over the round's data (new labels + replay)")
    seed: int = setting("TRAIN_SEED", 3407, "seed for data order, replay sampling and LoRA initialisation")
    replay_ratio: float = setting("REPLAY_RATIO", 1.0, "earlier gold labels replayed per new label, stratified by department, so the adapter keeps what it learnt")
    token_budget: int = setting("TRAIN_TOKEN_BUDGET", 600_000, "tokens one round trains on at most (about 1,100 tickets with the 70-department prompt); beyond it the round takes a stratified sample weighted towards recent labels, so a round stays minutes long with 10^5+ labels")
    recency_half_life: int = setting("TRAIN_RECENCY_HALF_LIFE", 5_000, "in a budgeted sample, a label this many labels older than the newest is half as likely to be drawn")
    tokens_per_second: float = setting("TRAIN_TOKENS_PER_SECOND", 2_300.0, "training throughput assumed to estimate a round's duration until a round has been measured here (2,300 was measured at micro-batch 2 x 8 on an H200)")
    promote_tolerance: float = setting("PROMOTE_TOLERANCE", 0.0, "a candidate is promoted unless its macro-F1 on the frozen split falls below the serving version's by more than this")

    def validate(self) -> None:
        if min(self.lora_r, self.pad_to_multiple_of) <= 0 or min(self.micro_batch, self.grad_accumulation) < 0:
            raise SettingsError("TRAIN_LORA_R and TRAIN_PAD_TO_MULTIPLE_OF must be positive, TRAIN_MICRO_BATCH and TRAIN_GRAD_ACCUMULATION"
                                " positive or 0 (auto)")
        if not 0 < self.learning_rate < 10:
            raise SettingsError(f"TRAIN_LEARNING_RATE must be in (0, 10), got {self.learning_rate}")
        if min(self.token_budget, self.recency_half_life) <= 0 or self.tokens_per_second <= 0:
            raise SettingsError("TRAIN_TOKEN_BUDGET, TRAIN_RECENCY_HALF_LIFE and TRAIN_TOKENS_PER_SECOND must be positive")
        if self.replay_ratio < 0 or self.promote_tolerance < 0 or self.epochs <= 0:
            raise SettingsError("REPLAY_RATIO and PROMOTE_TOLERANCE must be >= 0 and TRAIN_EPOCHS > 0")

    @property
    def modules(self) -> list[str]:
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]
