"""The names the store, the service and the workers share for models and jobs, and the one way a worker starts.

Job statuses move forward only: queued → running → (evaluating →) promoted | rejected | succeeded | failed.
"succeeded" means the job ended without a new model version (a pre-annotation that finished, a round with nothing
new to learn); "evaluating" is a trained candidate being scored by the gate.
"""
from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class ModelKind(StrEnum):
    INSTANT = "instant"
    LLM = "llm"


class JobKind(StrEnum):
    TRAIN = "train"  # a LoRA fine-tuning round (training/round.py), one at a time on the GPU
    REFIT = "refit"  # a full refit of a project's instant model (learning/refit.py), on the CPU
    PREANNOTATE = "preannotate"  # suggestions for every unlabelled task of a project, pushed to Label Studio


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    EVALUATING = "evaluating"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.EVALUATING)
IN_PROGRESS = (JobStatus.RUNNING, JobStatus.EVALUATING)


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills the worker when the thread that started it ends."""
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def launch_worker(module: str, args: list[str], env: Mapping[str, str], log_path: Path | None = None,
                  die_with_parent: bool = True) -> subprocess.Popen:
    """``python -m <module> <args>`` from the repository root with `env`, output appended to `log_path` (inherited
    when None). With `die_with_parent` the worker cannot outlive the service that started it."""
    out = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 (the child writes to it after we return)
    try:
        return subprocess.Popen([sys.executable, "-m", module, *args], env={**env, "PYTHONUNBUFFERED": "1"}, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT if out else None,
                                preexec_fn=_die_with_parent if die_with_parent else None)
    finally:
        if out is not None:
            out.close()
