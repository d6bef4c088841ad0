"""The LLM plugs into the backend: BASE_MODEL serves it, concurrent calls are batched, failures fall back."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from backend.app import create_app
from backend.batching import BatchingClassifier
from core.classifier import Distribution
from tests.helpers import SAMPLES, predict_body, wait_until
from training.loading import TokenizerBroken, check_tokenizer
from training.tiny_model import build_tokenizer, save_tiny_model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


def post(client, path, body):
    return client.post(path, data=json.dumps(body, ensure_ascii=False), content_type="application/json")


def test_with_base_model_set_the_llm_answers_predict(settings, tiny_model_dir):
    app = create_app(settings.replace(base_model=str(tiny_model_dir), predict_batch_size=4))
    service = app.extensions["service"]
    client = app.test_client()
    assert client.get("/health").status_code == 200  # answers while the model loads
    wait_until(lambda: service.models.llm_state["state"] != "loading", timeout=120, what="the LLM to load")
    assert service.models.llm_state["state"] == "ready", service.models.llm_state
    results = post(client, "/predict", predict_body([s["text"] for s in SAMPLES[:6]])).get_json()["results"]
    assert [r["model_version"] for r in results] == ["llm-base"] * 6
    assert all(0 < r["score"] <= 1 for r in results)
    assert client.get("/status").get_json()["llm"]["state"] == "ready"
    assert post(client, "/setup", {"project": "1.1"}).get_json()["model_version"] == "llm-base"
    service.stop()


def test_ten_hot_swaps_leave_no_thread_and_no_memory_behind(tmp_path, tiny_model_dir):
    run = subprocess.run([sys.executable, "-m", "tests.swap_probe", "--base-model", str(tiny_model_dir),
                          "--model-dir", str(tmp_path / "model"), "--swaps", "10"],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    probe = json.loads(run.stdout.strip().splitlines()[-1])
    assert probe["threads_after"] <= probe["threads_before"]
    assert probe["live_scorers"] == 1  # only the serving one
    memory = probe["resident_mib"]
    assert memory[-1] - memory[0] < 64, memory


def test_the_instant_model_keeps_serving_when_the_llm_cannot_load(settings, tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    app = create_app(settings.replace(base_model=str(broken)))
    service = app.extensions["service"]
    wait_until(lambda: service.models.llm_state["state"] != "loading", timeout=60, what="the load attempt")
    assert service.models.llm_state["state"] == "failed" and service.models.llm_state["error"]
    result = post(app.test_client(), "/predict", predict_body(["小区电梯坏了"])).get_json()["results"][0]
    assert result["model_version"].startswith("instant-")
    service.stop()


def test_concurrent_calls_are_merged_into_one_batch_and_answered_in_order():
    calls: list[list[str]] = []
    first_call_started, release = threading.Event(), threading.Event()

    class Recorder:
        version, departments = "v", ("甲", "乙")

        def predict_proba(self, texts):
            calls.append(list(texts))
            if len(calls) == 1:
                first_call_started.set()
                release.wait(10)
            probs = np.array([[1.0, 0.0] if t.startswith("甲") else [0.0, 1.0] for t in texts])
            return Distribution(probs=probs, truncated=np.zeros(len(texts), dtype=bool))

    batcher = BatchingClassifier(Recorder(), max_batch=32)
    answers = {}

    def ask(name, texts):
        answers[name] = batcher.predict_proba(texts).probs.argmax(axis=1).tolist()

    threads = [threading.Thread(target=ask, args=("first", ["甲1"]))]
    threads[0].start()
    assert first_call_started.wait(10)
    for name, texts in [("a", ["乙2", "甲3"]), ("b", ["甲4"]), ("c", ["乙5", "乙6", "甲7"])]:
        threads.append(threading.Thread(target=ask, args=(name, texts)))
        threads[-1].start()
    wait_until(lambda: batcher._queue.qsize() == 3, timeout=10, what="three queued calls")
    release.set()
    for thread in threads:
        thread.join(10)
    assert calls == [["甲1"], ["乙2", "甲3", "甲4", "乙5", "乙6", "甲7"]]  # never two model calls at once
    assert answers == {"first": [0], "a": [1, 0], "b": [0], "c": [1, 1, 0]}


def test_the_tokenizer_check_rejects_a_tokenizer_that_loses_chinese():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ascii_only = Tokenizer(models.WordLevel(vocab={"<unk>": 0, **{chr(c): c for c in range(1, 128)}}, unk_token="<unk>"))
    ascii_only.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    ascii_only.decoder = decoders.Fuse()
    broken = PreTrainedTokenizerFast(tokenizer_object=ascii_only, unk_token="<unk>")
    with pytest.raises(TokenizerBroken, match="#45488") as err:
        check_tokenizer(broken, "/models/r1")
    assert "Qwen2Tokenizer" in str(err.value)
    check_tokenizer(build_tokenizer(), "tiny")  # the real thing passes
