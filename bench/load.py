"""Sustained load on the backend while a fine-tuning job runs: /predict batches, webhook bursts, /health polls.

    .venv/bin/python -m bench.load --duration 120 --out bench/results/load_cpu.json

starts its own backend (the tiny LLM on the CPU, so a real training job runs in the background) on 127.0.0.1, or
drives one that is already running with --url (loopback addresses only). The run is bounded in time and in
requests. At the end every webhook the backend acknowledged is looked up in the store: none may be missing or
duplicated. Reported per endpoint: requests, errors, throughput, p50/p99 latency; and the backend's peak memory
(its process tree: service and training worker).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse

import requests

from annotation_config.catalog import DEFAULT_LABELING_CONFIG, SAMPLE_TICKETS

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CONFIG = DEFAULT_LABELING_CONFIG.read_text(encoding="utf-8")
SAMPLES = [json.loads(line) for line in SAMPLE_TICKETS.read_text(encoding="utf-8").splitlines() if line.strip()]


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.acknowledged: list[int] = []

    def call(self, session: requests.Session, name: str, method: str, url: str, **kwargs):
        started = time.perf_counter()
        try:
            response = session.request(method, url, timeout=120, **kwargs)
            ok = response.status_code < 400
            detail = "" if ok else f"{response.status_code} {response.text[:120]}"
        except requests.RequestException as exc:
            response, ok, detail = None, False, f"{type(exc).__name__}: {exc}"
        with self.lock:
            self.latencies[name].append(time.perf_counter() - started)
            if not ok:
                self.errors[name].append(detail)
        return response if ok else None


def event(annotation_id: int, sample: dict) -> dict:
    return {"action": "ANNOTATION_CREATED",
            "annotation": {"id": annotation_id, "task": annotation_id, "project": 1, "completed_by": 1, "was_cancelled": False,
                           "result": [{"from_name": "department", "to_name": "text", "type": "choices",
                                       "value": {"choices": [sample["department"]]}}],
                           "created_at": "2026-11-28T10:00:00Z", "updated_at": "2026-11-28T10:00:00Z", "lead_time": 5.0},
            "task": {"id": annotation_id, "data": {"text": sample["text"]}, "project": 1},
            "project": {"id": 1, "label_config": CONFIG}}


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        todo.extend(children.get(current, []))
    return total / 1024


def start_backend(work: Path, port: int):
    import subprocess

    from training.tiny_model import save_tiny_model

    env = {**os.environ, "MODEL_DIR": str(work / "model"), "PORT": str(port), "HOST": "127.0.0.1",
           "BASE_MODEL": str(save_tiny_model(work / "tiny")), "TRAINING_DEVICE": "cpu", "TRAIN_EVERY_N_LABELS": "0",
           "RECONCILE_SECONDS": "0", "TRAIN_EPOCHS": "50", "TRAIN_MICRO_BATCH": "4", "TRAIN_GRAD_ACCUMULATION": "1",
           "PREDICT_BATCH_SIZE": "32", "LOG_LEVEL": "WARNING"}
    with open(work / "backend.log", "wb") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen([sys.executable, "-m", "backend"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/status", timeout=2).json()["llm"]["state"] == "ready":
                return process, url, work / "model"
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the backend did not come up; see {work / 'backend.log'}")


def run(url: str, duration: float, max_requests: int, predict_batch: int, burst: int, first_id: int, seed: int) -> Recorder:
    recorder, stop, rng = Recorder(), threading.Event(), random.Random(seed)
    budget = threading.Semaphore(max_requests)
    next_id = [first_id]

    def loop(body):
        session = requests.Session()
        while not stop.is_set() and budget.acquire(blocking=False):
            body(session)

    def predict(session):
        tasks = [{"id": i + 1, "data": {"text": rng.choice(SAMPLES)["text"]}} for i in range(predict_batch)]
        recorder.call(session, "/predict", "POST", f"{url}/predict", json={"tasks": tasks, "label_config": CONFIG, "project": "1.1"})

    def webhooks(session):
        for _ in range(burst):
            with recorder.lock:
                annotation_id = next_id[0]
                next_id[0] += 1
            answer = recorder.call(session, "/webhook", "POST", f"{url}/webhook", json=event(annotation_id, rng.choice(SAMPLES)))
            if answer is not None and answer.json().get("outcome") == "created":
                with recorder.lock:
                    recorder.acknowledged.append(annotation_id)
        stop.wait(0.5)  # bursts, as annotators submit, not a flood

    def health(session):
        recorder.call(session, "/health", "GET", f"{url}/health")
        stop.wait(0.05)

    threads = [threading.Thread(target=loop, args=(body,), daemon=True) for body in (predict, predict, webhooks, health)]
    for thread in threads:
        thread.start()
    stop.wait(duration)
    stop.set()
    for thread in threads:
        thread.join(timeout=150)
    return recorder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--url", help="a running backend on this machine (default: start one with the tiny LLM)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load (default: %(default)s)")
    parser.add_argument("--max-requests", type=int, default=50_000, help="stop after this many requests (default: %(default)s)")
    parser.add_argument("--predict-batch", type=int, default=32, help="tickets per /predict (default: %(default)s)")
    parser.add_argument("--burst", type=int, default=20, help="webhooks per burst (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        print("error: the load script only drives a backend on this machine (127.0.0.1)", file=sys.stderr)
        return 2

    from core.store import Store
    from tools.demo import stop_process
    from tools.local_label_studio import free_port

    work = Path(tempfile.mkdtemp(prefix="load-"))
    process = None
    if args.url:
        url, model_dir = args.url.rstrip("/"), None
    else:
        process, url, model_dir = start_backend(work, free_port())
    try:
        requests.post(f"{url}/setup", json={"project": "1.1", "schema": CONFIG}, timeout=10)
        warmup = run(url, 5, 100, 4, 10, first_id=1, seed=1)  # some labels, so the training job has data
        job = requests.post(f"{url}/jobs", timeout=10).json() if process else None
        peak_rss, sampling = [0.0], threading.Event()

        def sample_memory():
            while not sampling.is_set():
                if process:
                    peak_rss[0] = max(peak_rss[0], tree_rss_mib(process.pid))
                sampling.wait(0.5)
        threading.Thread(target=sample_memory, daemon=True).start()
        started = time.perf_counter()
        recorder = run(url, args.duration, args.max_requests, args.predict_batch, args.burst, first_id=1_000_000, seed=2)
        elapsed = time.perf_counter() - started
        sampling.set()
        job_state = requests.get(f"{url}/jobs/{job['job']}", timeout=10).json() if job else None

        report = {"duration_s": round(elapsed, 1), "endpoints": {}, "backend_peak_rss_mib": round(peak_rss[0], 1) if process else None,
                  "training_job": {k: job_state.get(k) for k in ("id", "status", "progress")} if job_state else None}
        for name, values in sorted(recorder.latencies.items()):
            ordered = sorted(values)
            report["endpoints"][name] = {
                "requests": len(values), "errors": len(recorder.errors[name]), "per_second": round(len(values) / elapsed, 1),
                "p50_ms": round(1000 * statistics.median(ordered), 1),
                "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
                "max_ms": round(1000 * ordered[-1], 1), "first_errors": recorder.errors[name][:3]}
        if model_dir is not None:
            stored = {l.annotation_id for l in Store(model_dir / "store.sqlite3").labels()}
            acknowledged = set(warmup.acknowledged) | set(recorder.acknowledged)
            report["labels"] = {"acknowledged": len(acknowledged), "stored": len(stored),
                                "lost": len(acknowledged - stored), "unexpected": len(stored - acknowledged),
                                "integrity_errors": Store(model_dir / "store.sqlite3").integrity_errors()}
        print(json.dumps(report, ensure_ascii=False, indent=2))
        print("\n| endpoint | requests | errors | per s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|")
        for name, r in report["endpoints"].items():
            print(f"| {name} | {r['requests']} | {r['errors']} | {r['per_second']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |")
        if args.out:
            args.out.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
        lost = report.get("labels", {}).get("lost", 0)
        return 0 if not lost else 1
    finally:
        if process is not None:
            stop_process(process)


if __name__ == "__main__":
    sys.exit(main())
