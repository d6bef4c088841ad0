"""Swap project 1's LLM `--swaps` times in a fresh process and print its threads, live scorers and memory as JSON.

A process of its own because resident memory is process-wide: in the test session, other tests' threads allocate
while the swaps are measured (CI saw 86-143 MiB "growth" that a lone process never shows)."""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import threading
import weakref
from pathlib import Path

from backend.app import create_app
from core.jobs import ModelKind
from core.settings import Settings
from tests.helpers import SAMPLES, predict_body, wait_until


def resident_mib() -> float:
    """Resident memory after a collection, with glibc's freed-but-kept heap handed back: what is still held."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--warm-up", type=int, default=5, help="swaps before the first measurement (allocator, caches)")
    parser.add_argument("--swaps", type=int, default=10)
    args = parser.parse_args()
    settings = Settings(model_dir=Path(args.model_dir), base_model=args.base_model, predict_batch_size=4,
                        instant_refit_seconds=0.0, reconcile_seconds=0, prepare_wait_seconds=60)
    app = create_app(settings)
    service, client = app.extensions["service"], app.test_client()
    wait_until(lambda: service.models.llm_state["state"] == "ready", timeout=120, what="the LLM to load")
    wait_until(lambda: service.models.serving_version(1) == "llm-base", timeout=60, what="project 1 on the LLM")
    version = service.store.serving_version(1, ModelKind.LLM)
    body = json.dumps(predict_body([s["text"] for s in SAMPLES[:4]]), ensure_ascii=False)
    scorers = []

    def swap_and_predict():
        service.models.activate_llm(1, version)  # a promotion or a rollback: a new scorer, its own batching thread
        assert client.post("/predict", data=body, content_type="application/json").status_code == 200
        scorers.append(weakref.ref(service.models.line(1).serving.inner))

    for _ in range(args.warm_up):
        swap_and_predict()
    threads, memory = threading.active_count(), [resident_mib()]
    for _ in range(args.swaps):
        swap_and_predict()
        memory.append(resident_mib())
    wait_until(lambda: threading.active_count() <= threads, timeout=10, what=f"the thread count to fall back to {threads}")
    gc.collect()
    print(json.dumps({"threads_before": threads, "threads_after": threading.active_count(),
                      "live_scorers": sum(ref() is not None for ref in scorers), "resident_mib": memory}))
    service.stop()


if __name__ == "__main__":
    main()
