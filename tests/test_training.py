"""The fine-tuning loop on CPU with the tiny Qwen2: learn, gate, roll back, survive a killed worker."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from backend.app import create_app
from core.settings import Settings
from tests.helpers import annotation_event, repo_root, wait_until
from training.tiny_model import save_tiny_model

DEPARTMENTS = {  # each department has its own words: a set a two-layer model can learn in a minute on a CPU
    "市供电公司": ["停电", "电费", "电表", "跳闸", "供电", "电压不稳", "断电"],
    "市自来水公司": ["停水", "水压低", "水管爆裂", "水费", "自来水浑浊", "没水"],
    "市燃气集团": ["燃气", "煤气味", "天然气", "燃气表", "燃气灶", "漏气"],
    "市公交集团": ["公交", "司机", "站台", "线路", "公交车", "晚点", "拒载"],
}
CONFIG = ('<View><Text name="text" value="$text"/><Choices name="department" toName="text" choice="single">'
          + "".join(f'<Choice value="{d}"/>' for d in DEPARTMENTS) + "</Choices></View>")
FAST_TRAINING = {"TRAIN_LEARNING_RATE": "0.01", "TRAIN_EPOCHS": "6", "TRAIN_MICRO_BATCH": "8", "TRAIN_GRAD_ACCUMULATION": "1",
                 "TRAIN_WARMUP_STEPS": "2", "TRAIN_LORA_R": "16", "TRAIN_LORA_ALPHA": "32", "TRAIN_LORA_DROPOUT": "0"}


def tickets(n_per_department: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = [("，".join(rng.choice(words) for _ in range(rng.randint(5, 9))) + "。", d)
            for d, words in DEPARTMENTS.items() for _ in range(n_per_department)]
    rng.shuffle(rows)
    return rows


def post(client, path, body):
    return client.post(path, data=json.dumps(body, ensure_ascii=False), content_type="application/json")


def predict(client, texts):
    body = {"tasks": [{"id": i + 1, "data": {"text": t}} for i, t in enumerate(texts)], "label_config": CONFIG, "project": "1.1"}
    return post(client, "/predict", body).get_json()["results"]


def request_round(client) -> dict:
    return post(client, "/jobs", {"project": 1}).get_json()


def wait_for_job(service, job_id, timeout=600):
    return wait_until(lambda: (j := service.store.get_job(job_id)).finished and j, timeout=timeout, interval=0.2,
                      what=f"job {job_id} to finish")


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A service on the tiny LLM with 160 labelled tickets, after one fine-tuning round."""
    patch = pytest.MonkeyPatch()
    for key, value in FAST_TRAINING.items():
        patch.setenv(key, value)
    root = tmp_path_factory.mktemp("loop")
    settings = Settings(model_dir=root / "model", base_model=str(save_tiny_model(root / "tiny")), instant_refit_seconds=0.0,
                        reconcile_seconds=0, train_every_n_labels=0, predict_batch_size=16, training_device="cpu")
    app = create_app(settings)
    service, client = app.extensions["service"], app.test_client()
    post(client, "/setup", {"project": "1.1", "schema": CONFIG})
    wait_until(lambda: service.models.serving_version(1) == "llm-base" and service.models.space(1).departments == tuple(DEPARTMENTS),
               timeout=120, what="the LLM to serve project 1's 4-department config")
    for i, (text, department) in enumerate(tickets(40, seed=0)):
        assert post(client, "/webhook", annotation_event("ANNOTATION_CREATED", i + 1, i + 1, text, department, config=CONFIG)).status_code == 200
    probe = [t for t, _ in tickets(3, seed=99)]
    before = predict(client, probe)

    job = request_round(client)
    during = []
    wait_until(lambda: service.store.get_job(job["job"]).status != "queued", timeout=60, what="the job to start")
    while service.store.get_job(job["job"]).status == "running" and len(during) < 5:  # the service answers while it trains
        started = time.perf_counter()
        during.append((client.get("/health").status_code, predict(client, probe[:1])[0]["model_version"], time.perf_counter() - started))
    finished = wait_for_job(service, job["job"])
    wait_until(lambda: service.models.serving_version(1) == "lora-1", timeout=30, what="the hot swap to lora-1")
    yield {"settings": settings, "app": app, "service": service, "client": client, "job": finished, "probe": probe,
           "before": before, "after": predict(client, probe), "during": during, "env": patch}
    service.stop()
    patch.undo()


def test_one_round_raises_accuracy_on_the_frozen_split_from_chance_to_well_above(loop):
    job, service = loop["job"], loop["service"]
    assert job.status == "promoted", job.error
    report = service.store.get_version(1, "lora-1").metrics
    assert report["n"] == service.store.label_stats(1)["eval"] >= 30
    assert report["serving_metrics"]["accuracy"] <= 0.5  # the untrained model: chance is 0.25
    assert report["accuracy"] >= 0.9 and report["macro_f1"] >= 0.9
    assert [r["model_version"] for r in loop["after"]] == ["lora-1"] * len(loop["probe"])
    data = service.store.get_version(1, "lora-1").data
    assert data["new_labels"] == service.store.label_stats(1)["labels"] - report["n"]  # the split is never trained on


def test_batches_are_padded_to_a_multiple_of_64_not_to_the_maximum_length(loop):
    data = loop["service"].store.get_version(1, "lora-1").data
    full_rows = data["examples"] * float(FAST_TRAINING["TRAIN_EPOCHS"]) * loop["settings"].max_seq_length
    assert data["processed_tokens"] % 64 == 0
    assert data["tokens"] <= data["processed_tokens"] < full_rows / 2  # these ~280-token rows padded to 896: 2.8x
    assert data["padding_fraction"] == round(1 - data["tokens"] / data["processed_tokens"], 4) < 0.25


def test_requests_are_answered_while_training_runs(loop):
    assert loop["during"], "the job finished before any request could be made during it"
    assert all(status == 200 and version == "llm-base" for status, version, _ in loop["during"])


def test_job_progress_is_visible(loop):
    client = loop["client"]
    job = client.get(f"/jobs/{loop['job'].id}").get_json()
    assert job["progress"]["step"] == job["progress"]["total_steps"] > 0
    assert job["version"] == "lora-1"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'backend_jobs{kind="train",status="promoted"}' in metrics
    assert 'backend_model_eval{kind="llm",metric="accuracy",project="1",version="lora-1"}' in metrics


def test_a_worse_candidate_is_rejected_and_the_serving_version_stays(loop):
    service, client = loop["service"], loop["client"]
    loop["env"].setenv("TRAIN_LEARNING_RATE", "3.0")  # a diverging round
    for i, (text, department) in enumerate(tickets(2, seed=5)):
        post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 1000 + i, 1000 + i, text, department, config=CONFIG))
    job = wait_for_job(service, request_round(client)["job"])
    loop["env"].setenv("TRAIN_LEARNING_RATE", FAST_TRAINING["TRAIN_LEARNING_RATE"])
    assert job.status == "rejected"
    rejected = service.store.get_version(1, job.version)
    assert rejected.status == "rejected" and "fell below serving" in rejected.note
    assert rejected.metrics["macro_f1"] < rejected.metrics["serving_metrics"]["macro_f1"]
    assert service.models.serving_version(1) == "lora-1"
    assert client.get("/versions?project=1").get_json()["serving"] == "lora-1"


def rollback(settings: Settings, version: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODEL_DIR": str(settings.model_dir)}
    return subprocess.run([sys.executable, "-m", "backend", "rollback", version, "--project", "1"], env=env, cwd=repo_root(),
                          capture_output=True, text=True, timeout=60)


def test_rollback_restores_the_previous_predictions_exactly(loop):
    service, client, probe = loop["service"], loop["client"], loop["probe"]
    done = rollback(loop["settings"], "llm-base")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: service.models.serving_version(1) == "llm-base", timeout=30, what="the rollback to be served")
    restored = predict(client, probe)
    assert [r["score"] for r in restored] == [r["score"] for r in loop["before"]]
    assert [r["result"] for r in restored] == [r["result"] for r in loop["before"]] or \
        [r["result"][0]["value"] for r in restored] == [r["result"][0]["value"] for r in loop["before"]]
    assert rollback(loop["settings"], "lora-1").returncode == 0
    wait_until(lambda: service.models.serving_version(1) == "lora-1", timeout=30, what="the return to lora-1")
    assert [r["score"] for r in predict(client, probe)] == [r["score"] for r in loop["after"]]
    bad = rollback(loop["settings"], "lora-99")
    assert bad.returncode == 2 and "has no LLM version 'lora-99'" in bad.stderr


def test_killing_the_worker_mid_training_fails_the_job_and_keeps_serving(loop):
    service, client = loop["service"], loop["client"]
    loop["env"].setenv("TRAIN_EPOCHS", "200")  # long enough to be caught in the middle
    for i, (text, department) in enumerate(tickets(2, seed=6)):
        post(client, "/webhook", annotation_event("ANNOTATION_CREATED", 2000 + i, 2000 + i, text, department, config=CONFIG))
    job_id = request_round(client)["job"]
    running = wait_until(lambda: (j := service.store.get_job(job_id)).progress.get("step", 0) >= 1 and j, timeout=300,
                         what="the job to make progress")
    loop["env"].setenv("TRAIN_EPOCHS", FAST_TRAINING["TRAIN_EPOCHS"])
    os.kill(running.pid, signal.SIGKILL)
    failed = wait_for_job(service, job_id, timeout=60)
    assert failed.status == "failed"
    assert "killed by signal 9" in failed.error
    assert service.models.serving_version(1) == "lora-1"
    assert {r["model_version"] for r in predict(client, loop["probe"])} == {"lora-1"}
    assert not list(loop["settings"].project_dir(1).glob("versions/.partial-*"))
    assert {v.name for v in service.store.versions(1, "llm")} == {"llm-base", "lora-1", "lora-2"}
