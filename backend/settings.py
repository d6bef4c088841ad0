"""All configuration of the service, in one typed object read from environment variables.

Names follow Label Studio's ML-backend conventions where one exists (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY,
BASIC_AUTH_USER/BASIC_AUTH_PASS, MODEL_DIR, PORT, LOG_LEVEL). ``python -m backend --help-settings`` prints this
table; the README's configuration table is the same text.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

from annotation_config.catalog import DEFAULT_CATALOG, DEFAULT_LABELING_CONFIG


class SettingsError(ValueError):
    """An environment variable has a value the service cannot use."""


def _setting(env: str, default, doc: str):
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    # Label Studio connection
    label_studio_url: str = _setting("LABEL_STUDIO_URL", "", "Label Studio base URL, e.g. http://127.0.0.1:8080; needed to pull annotations on START_TRAINING, reconcile, set the project's model_version and push predictions")
    label_studio_api_key: str = _setting("LABEL_STUDIO_API_KEY", "", "Label Studio API key (legacy token or personal access token) used by the backend; never logged or stored")
    # Service
    host: str = _setting("HOST", "127.0.0.1", "interface to listen on; 127.0.0.1 keeps the backend private, 0.0.0.0 exposes it (then set BASIC_AUTH_*)")
    port: int = _setting("PORT", 9090, "HTTP port")
    threads: int = _setting("THREADS", 8, "gunicorn worker threads (one worker process holds the model; threads keep /health and /webhook fast while /predict runs)")
    log_level: str = _setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    basic_auth_user: str = _setting("BASIC_AUTH_USER", "", "when set with BASIC_AUTH_PASS, every request needs HTTP Basic auth (configure the same pair in Label Studio's model settings)")
    basic_auth_pass: str = _setting("BASIC_AUTH_PASS", "", "password for BASIC_AUTH_USER")
    public_health: bool = _setting("PUBLIC_HEALTH", True, "leave GET /health open without auth (for load balancers); other endpoints still need it")
    max_request_bytes: int = _setting("MAX_REQUEST_BYTES", 20_000_000, "larger request bodies are refused with 413")
    max_tasks_per_predict: int = _setting("MAX_TASKS_PER_PREDICT", 5000, "a /predict call with more tasks is refused with 413")
    max_text_chars: int = _setting("MAX_TEXT_CHARS", 20_000, "ticket texts longer than this are cut for prediction and refused as gold labels (422)")
    # Storage and models
    model_dir: Path = _setting("MODEL_DIR", Path("models"), "where the label store (SQLite), model versions and job logs live")
    labeling_config: Path = _setting("LABEL_CONFIG", DEFAULT_LABELING_CONFIG, "labeling config used before Label Studio sends one (the project's config wins once it arrives)")
    catalog: Path = _setting("CATALOG", DEFAULT_CATALOG, "department catalog; its duties texts seed the instant model")
    model_title: str = _setting("MODEL_TITLE", "dept", "prefix of model version names")
    base_model: str = _setting("BASE_MODEL", "", "local path of the LLM (a Qwen2-family causal LM such as DeepSeek-R1-Distill-Qwen-7B); empty: the instant model serves")
    adapter: str = _setting("ADAPTER", "", "optional LoRA adapter directory to start from")
    max_seq_length: int = _setting("MAX_SEQ_LENGTH", 896, "LLM context length used for scoring and training")
    predict_batch_size: int = _setting("PREDICT_BATCH_SIZE", 32, "tickets per LLM forward pass; concurrent /predict calls are merged up to this")
    # Learning loop
    eval_fraction: float = _setting("EVAL_FRACTION", 0.2, "share of each department's gold texts frozen into the evaluation split")
    instant_refit_seconds: float = _setting("INSTANT_REFIT_SECONDS", 2.0, "the instant model refits at most this often while labels arrive")
    train_every_n_labels: int = _setting("TRAIN_EVERY_N_LABELS", 200, "queue an LLM fine-tuning job after this many new gold labels (0: only on START_TRAINING)")
    promote_tolerance: float = _setting("PROMOTE_TOLERANCE", 0.0, "a candidate is promoted unless its macro-F1 on the frozen split is lower than the serving version's by more than this")
    replay_ratio: float = _setting("REPLAY_RATIO", 1.0, "earlier gold labels replayed per new label in a fine-tuning round (stratified)")
    reconcile_seconds: float = _setting("RECONCILE_SECONDS", 600.0, "pull all annotations from Label Studio this often to recover lost webhooks (0: only on START_TRAINING)")
    training_device: str = _setting("TRAINING_DEVICE", "auto", "auto, cuda or cpu")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f, raw)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise SettingsError(f"PORT must be between 1 and 65535, got {self.port}")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if not 0 < self.eval_fraction < 0.9:
            raise SettingsError(f"EVAL_FRACTION must be in (0, 0.9), got {self.eval_fraction}")
        if self.training_device not in {"auto", "cuda", "cpu"}:
            raise SettingsError(f"TRAINING_DEVICE must be auto, cuda or cpu, got {self.training_device!r}")
        for name in ("threads", "max_request_bytes", "max_tasks_per_predict", "max_text_chars", "predict_batch_size", "max_seq_length"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{self.env_name(name)} must be positive")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user)

    @property
    def store_path(self) -> Path:
        return self.model_dir / "store.sqlite3"

    @property
    def versions_dir(self) -> Path:
        return self.model_dir / "versions"

    def replace(self, **changes) -> "Settings":
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
            lines.append(f"| `{f.metadata['env']}` | `{default}` | {f.metadata['doc']} |")
        return "\n".join(lines)


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _convert(f: dataclasses.Field, raw: str):
    kind = f.type if isinstance(f.type, type) else {"str": str, "int": int, "float": float, "bool": bool, "Path": Path}[f.type]
    env = f.metadata["env"]
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
