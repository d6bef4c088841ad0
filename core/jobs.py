"""The names the store, the service and the workers share for models and jobs, and the one way a worker starts.

Job statuses move forward only: queued → running → (evaluating →) promoted | rejected | succeeded | failed.
"succeeded" means the job ended without a new model version (a pre-annotation that finished, a round with nothing
new to learn); "evaluating" is a trained candidate being scored by the gate.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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
HEARTBEAT_SECONDS = 10.0  # a running job's worker says it is alive this often (JOB_LOST_AFTER_SECONDS declares it lost)


def worker_id() -> str:
    """Who claims a job: this machine and process, so a restart can tell its own dead jobs from other replicas'."""
    return f"{socket.gethostname()}:{os.getpid()}"


def died_here(claimant: str | None) -> bool:
    """The claimant (a `worker_id`) was a process of this machine that no longer exists (or there was none)."""
    if claimant is None:
        return True
    host, _, pid = claimant.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


PARTIAL_PREFIX = ".partial-"


def partial_dir(final: Path) -> Path:
    """Where a model folder is written before its rename, named after the writer so that only a dead writer's
    leftovers are swept: a live one (a prepare thread of this very process, a worker elsewhere) keeps its folder."""
    return final.with_name(f"{PARTIAL_PREFIX}{final.name}@{worker_id()}")


def remove_stale_partials(model_dir: Path) -> None:
    """Remove half-written model folders whose writer died on this machine (another machine's sweeps its own)."""
    for path in model_dir.glob(f"projects/*/*/{PARTIAL_PREFIX}*"):
        if "@" not in path.name or died_here(path.name.rpartition("@")[2]):
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def heartbeat(store, job_id: int, claimed_by: str, every: float = HEARTBEAT_SECONDS) -> Iterator[threading.Event]:
    """Beat for the job while the block runs. The event yielded is set when the job stopped being this worker's
    (another declared it lost): the work should stop, it will not be promoted."""
    stop, lost = threading.Event(), threading.Event()

    def beat():
        while not stop.wait(every):
            if not store.heartbeat(job_id, claimed_by):
                lost.set()
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()


def exit_with_parent() -> None:
    """Runs in the child before exec: the kernel kills the worker when the thread that started it ends."""
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def launch_worker(module: str, args: list[str], env: Mapping[str, str], log_path: Path | None = None,
                  die_with_parent: bool = True) -> subprocess.Popen:
    """``python -m <module> <args>`` from the repository root with `env`, output appended to `log_path` (inherited
    when None). With `die_with_parent` the worker cannot outlive the service that started it."""
    out = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 (the child writes to it after we return)
    try:
        # faulthandler: a worker killed by a signal inside a native library (a SIGSEGV was seen once on the CPU path,
        # while the LoRA round set up) leaves the Python stack of every thread in its log.
        return subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", module, *args], env={**env, "PYTHONUNBUFFERED": "1"}, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT if out else None,
                                preexec_fn=exit_with_parent if die_with_parent else None)
    finally:
        if out is not None:
            out.close()
