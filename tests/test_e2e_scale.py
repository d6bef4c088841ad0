"""Past one machine: two backend replicas and one training worker on PostgreSQL (STORE_URL) and Redis + RQ
(QUEUE_URL), started as real processes on 127.0.0.1. Labels spread over both replicas (duplicates included) are
stored once; a round queued by one replica is trained by the worker and served by both; kill -9 of a replica in a
burst and of the worker in a round lose nothing and promote once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import requests

from core.store import Store
from tests.helpers import annotation_event, repo_root, served_version, wait_until
from tests.test_training import CONFIG as FOUR_DEPARTMENTS
from tests.test_training import FAST_TRAINING, tickets
from training.tiny_model import save_tiny_model

pytestmark = pytest.mark.e2e


def start_worker(env: dict, log_path) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "training.worker"], env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                                cwd=repo_root(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_9(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def deliver(url: str, event: dict) -> bool:
    """True when the replica acknowledged the label (Label Studio, or a load balancer, would try another otherwise)."""
    try:
        return requests.post(f"{url}/webhook", json=event, timeout=10).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def workers():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            kill_9(process)


def test_two_replicas_and_a_worker_share_one_store_and_one_queue(postgres, redis_server, running_backend, workers, tmp_path):
    model_dir = tmp_path / "shared-model-dir"  # the volume replicas and workers share (mounted anywhere: paths are relative)
    env = {"STORE_URL": postgres.new_database(), "MODEL_DIR": str(model_dir), "QUEUE_URL": redis_server.url,
           "BASE_MODEL": str(save_tiny_model(tmp_path / "tiny")),
           "TRAINING_DEVICE": "cpu", "TRAIN_EVERY_N_LABELS": "0", "JOB_LOST_AFTER_SECONDS": "20", **FAST_TRAINING}
    first, second = running_backend(model_dir=model_dir, **env), running_backend(model_dir=model_dir, **env)
    assert requests.get(f"{first.url}/health", timeout=5).json()["replica"] != requests.get(f"{second.url}/health", timeout=5).json()["replica"]
    requests.post(f"{first.url}/setup", json={"project": "1.1", "schema": FOUR_DEPARTMENTS}, timeout=10)

    # a burst of 80 labels over both replicas, a quarter delivered twice (once to each); the second replica is
    # killed half-way: what it did not acknowledge goes to the first, as a load balancer would send it
    events = [annotation_event("ANNOTATION_CREATED", i + 1, i + 1, text, department, config=FOUR_DEPARTMENTS)
              for i, (text, department) in enumerate(tickets(20, seed=31))]
    for n, event in enumerate(events):
        if n == 40:
            kill_9(second.process)
        target = (first, second)[n % 2]
        if not deliver(target.url, event):
            assert deliver(first.url, event)
        if n % 4 == 0:
            deliver((second, first)[n % 2].url, event)
    second = running_backend(model_dir=model_dir, port=second.port, **env)
    store = Store(env["STORE_URL"])
    assert sorted(l.annotation_id for l in store.labels()) == list(range(1, 81)) and store.integrity_errors() == []

    # a round queued by one replica, its worker killed mid-round: declared lost, queued again, trained by the next
    # worker, promoted once, served by both replicas
    slow = start_worker({**env, "TRAIN_EPOCHS": "200"}, tmp_path / "worker-1.log")
    workers.append(slow)
    job = requests.post(f"{second.url}/jobs", json={"project": 1}, timeout=10).json()
    running = wait_until(lambda: (j := store.get_job(job["job"])).progress.get("step", 0) >= 1 and j, timeout=600, interval=0.5,
                         what="the worker to train")
    kill_9(slow)
    lost = wait_until(lambda: (j := store.get_job(running.id)).finished and j, timeout=120, what="the lost round to be failed")
    assert lost.status == "failed" and "lost" in lost.error
    workers.append(start_worker(env, tmp_path / "worker-2.log"))
    redone = wait_until(lambda: next((j for j in store.jobs(kind="train", project_id=1) if j.id != running.id and j.finished), None),
                        timeout=900, interval=0.5, what="the round queued again to finish")
    assert redone.status == "promoted", redone
    assert [v.name for v in store.versions(1, "llm") if v.status == "serving"] == [redone.version]
    assert {v.name for v in store.versions(1, "llm")} == {"llm-base", redone.version}  # the lost round never registered
    for replica in (first, second):
        wait_until(lambda r=replica: served_version(r.url, 1) == redone.version, timeout=60, what="both replicas on the new version")
