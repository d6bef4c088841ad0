"""A training worker for the queue: runs the rounds the service replicas hand to Redis, on this (GPU) machine.

    QUEUE_URL=redis://queue:6379/0 STORE_URL=postgresql://… MODEL_DIR=/shared/models BASE_MODEL=… \\
        python -m training.worker

It needs what a round needs (the store, the shared MODEL_DIR where adapters are written, BASE_MODEL) and the queue.
Each round runs in a work horse forked per job (RQ's default, so GPU memory goes back after every round) that dies
with the worker. The round claims its job in the store before anything else: two workers never train the same round,
and a worker killed mid-round is declared lost by the replicas (JOB_LOST_AFTER_SECONDS), its round queued again and
promoted at most once.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from core.jobs import exit_with_parent, worker_id
from core.settings import Settings, TrainingConfig

log = logging.getLogger("training.worker")
QUEUES = ("train",)


def run_job(job_id: int) -> str:
    """The RQ job: one round, claimed in the store by this worker."""
    from training.round import keep_compiled_kernels, run_round

    settings, config = Settings.from_env(), TrainingConfig.from_env()
    keep_compiled_kernels(settings)
    claimed_by = worker_id()
    try:
        return run_round(job_id, claimed_by, settings, config)
    except Exception as exc:
        from core.jobs import JobStatus
        from core.store import open_store

        log.exception("job %d failed", job_id)
        open_store(settings).finish_job(job_id, claimed_by, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", action="store_true", help="run what is queued, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    if not settings.queue_url:
        print("error: set QUEUE_URL (redis://...) to the queue the service replicas use", file=sys.stderr)
        return 2
    from redis import Redis
    from rq import Worker

    class HorseDiesWithWorker(Worker):
        def main_work_horse(self, job, queue):
            exit_with_parent()  # kill -9 of the worker must not leave a round running unseen
            super().main_work_horse(job, queue)

    from training.warmup import warm

    log.info("warm-up: %s", warm(settings, TrainingConfig.from_env()))  # before the first round, not inside it
    worker = HorseDiesWithWorker(list(QUEUES), connection=Redis.from_url(settings.queue_url), name=worker_id().replace(":", "-"))
    log.info("training worker %s waiting on %s", worker.name, ", ".join(QUEUES))
    worker.work(burst=args.burst, with_scheduler=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
