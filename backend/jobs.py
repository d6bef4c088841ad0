"""Fine-tuning jobs: queued in the store, run one at a time, each in its own process (training/round.py).

The web service keeps serving while a job runs: the job is another process with its own copy of the model. The
worker dies with the service (PR_SET_PDEATHSIG), and a worker that dies on its own (an error, an out-of-memory
kill, kill -9) leaves its job marked failed and the serving model untouched. On start, jobs left running by a
previous process are marked failed, unfinished adapter folders are removed, and queued jobs run.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable

from core.jobs import IN_PROGRESS, JobKind, JobStatus, launch_worker
from core.settings import Settings
from core.store import Job, Store, now

log = logging.getLogger(__name__)


class JobRunner:
    def __init__(self, settings: Settings, store: Store, on_finished: Callable[[Job], None]):
        self.settings = settings
        self.store = store
        self.on_finished = on_finished
        self.jobs_dir = settings.model_dir / "jobs"
        self._wake = threading.Event()
        self._stopped = False
        self.current: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    def start(self) -> None:
        self._recover()
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def request(self, reason: str, project_id: int | None = None) -> tuple[Job, bool]:
        """Queue a training job; while one is queued or running, requests coalesce into it."""
        job, created = self.store.request_job(JobKind.TRAIN, reason, project_id)
        if created:
            log.info("training job %d queued (%s)", job.id, reason)
        self._wake.set()
        return job, created

    def _recover(self) -> None:
        for job in self.store.jobs(kind=JobKind.TRAIN, status=IN_PROGRESS):
            self.store.update_job(job.id, status=JobStatus.FAILED, finished_at=now(),
                                  error="interrupted: the backend stopped while this job ran")
            log.warning("training job %d was interrupted by a restart; marked failed", job.id)
        for partial in self.settings.versions_dir.glob(".partial-*"):
            shutil.rmtree(partial, ignore_errors=True)

    def _loop(self) -> None:
        while not self._stopped:
            queued = self.store.jobs(kind=JobKind.TRAIN, status=[JobStatus.QUEUED], limit=1000)
            if not queued:
                self._wake.wait(timeout=2.0)
                self._wake.clear()
                continue
            job = min(queued, key=lambda j: j.id)
            try:
                self._run(job)
            except Exception as exc:  # the runner must survive anything a job does
                log.exception("training job %d could not run", job.id)
                self.store.update_job(job.id, status=JobStatus.FAILED, finished_at=now(), error=f"{type(exc).__name__}: {exc}")
            finished = self.store.get_job(job.id)
            try:
                self.on_finished(finished)
            except Exception:
                log.exception("after training job %d", job.id)

    def _run(self, job: Job) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.jobs_dir / f"{job.id}.log"
        self.current = launch_worker("training.round", ["--job", str(job.id)], {**os.environ, **self.settings.to_env()}, log_path)
        self.store.update_job(job.id, pid=self.current.pid)
        log.info("training job %d started (pid %d, log %s)", job.id, self.current.pid, log_path)
        code = self.current.wait()
        self.current = None
        after = self.store.get_job(job.id)
        if after.finished_at is None or (code != 0 and after.status != JobStatus.FAILED):
            reason = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            self.store.update_job(job.id, status=JobStatus.FAILED, finished_at=now(),
                                  error=f"the training worker {reason}; see {log_path}")
        log.info("training job %d: %s", job.id, self.store.get_job(job.id).status)
