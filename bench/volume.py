"""What each operation costs as the labels grow (issue 16): a hotline has 10^5-10^6 labelled tickets.

    .venv/bin/python -m bench.volume --sizes 1000 10000 100000 --out bench/results/volume_cpu.json

For each size, a fresh store is filled with that many gold labels of one project (the sample tickets with random
edits, on the 70 catalog departments), then measured through the product's own paths, one after the other:

  ingest        the store's batched upsert (what a history import does), rows/s
  refit         ``python -m learning.refit`` as the service runs it (a worker process): seconds and peak RSS
  start-up      ``python -m backend serve`` to /health, and to the first /predict answered from the saved model
  /predict      1 and 32 tickets, p50 over 20 calls
  /webhook      200 new labels one by one, p50/p99, while /health is polled (p99): the labels queue a refit, so
                part of this runs beside a refit's worker process
  export        ``python -m backend export`` (JSONL + CSV): seconds and peak RSS
  quality       ``python -m backend quality-report`` (5 out-of-fold fits of every label): seconds and peak RSS
  convergence   ``python -m backend convergence`` (scores across versions, churn of suggestions): seconds and peak RSS
  store         size on disk per label

A step that goes past --step-timeout is stopped and reported as such, with the sizes after it skipped for that step.
--departments 549 spreads the same tickets over 549 units (each catalog department split into sub-units, as the
Shanghai letters' units are), the widest label space of the dev sets; --steps runs only some of the steps.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from annotation_config.catalog import load_catalog, parse_catalog
from annotation_config.labeling_config import render_labeling_config
from bench.load import SAMPLES, event
from core.jobs import JobKind
from core.labeling import parse_label_config
from core.settings import Settings
from core.store import Label, Store
from tools.demo import start_backend, stop_process
from tools.local_label_studio import free_port

PROJECT = 1
INGEST_CHUNK = 5000
EDIT_CHARS = "的了是在有我他这中大来上个国到说们为子和你地出道也时年"
STEPS = ("refit", "serve", "export", "quality", "convergence")


def label_space(departments: int) -> tuple[str, list[str]]:
    """(labeling config, department names): the catalog's, or its departments split into sub-units up to `departments`
    (the first unit keeps the catalog's name, so the sample tickets' own departments stay valid)."""
    names = load_catalog().names
    extra = [f"{name}第{k}分中心" for k in range(2, departments) for name in names][:max(0, departments - len(names))]
    names = list(names) + extra
    return render_labeling_config(parse_catalog([{"name": name} for name in names])), names


def unit(department: str, i: int, names: list[str]) -> str:
    """The ticket's sub-unit: tickets of one catalog department spread round its sub-units by number."""
    units = [department] + [n for n in names[70:] if n.startswith(department + "第")]
    return units[i % len(units)]


def ticket(rng: random.Random, i: int) -> tuple[str, str]:
    """A sample ticket with a few random character edits and its own number, so no two texts are the same."""
    sample = SAMPLES[rng.randrange(len(SAMPLES))]
    chars = list(sample["text"])
    for _ in range(3):
        chars[rng.randrange(len(chars))] = rng.choice(EDIT_CHARS)
    return "".join(chars) + f"（工单{i}）", sample["department"]


def fill(store: Store, n: int, seed: int, names: list[str]) -> float:
    rng = random.Random(seed)
    started = time.perf_counter()
    for first in range(0, n, INGEST_CHUNK):
        batch = []
        for i in range(first, min(n, first + INGEST_CHUNK)):
            text, department = ticket(rng, i)
            batch.append(Label(annotation_id=i + 1, project_id=PROJECT, task_id=i + 1, text=text, department=unit(department, i, names),
                               annotator="bench", created_at="2026-12-01T00:00:00Z", source="history"))
        store.upsert_labels(batch)
    return n / (time.perf_counter() - started)


def child(cmd: list[str], env: dict, timeout: float) -> dict:
    """Run a command; its wall time and its own peak RSS (wait4), or that it ran out of time."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    _, status, usage = os.wait4(process.pid, 0)
    timer.cancel()
    seconds = time.perf_counter() - started
    if seconds >= timeout:
        return {"timed_out": True, "seconds": round(seconds, 1)}
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {process.stderr.read().decode()[-2000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def percentile(values: list[float], q: float) -> float:
    return round(sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000, 1)


def serve(model_dir: Path, env: dict, n: int, log: Path, config: str) -> dict:
    """Start-up, /predict, and /webhook beside /health polls, against a running backend."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    process = start_backend(Settings(), model_dir, port, None, log, extra_env={k: v for k, v in env.items() if k not in os.environ})
    out = {"startup_to_health_s": round(time.perf_counter() - started, 2)}
    texts = [ticket(random.Random(7), i)[0] for i in range(32)]
    try:
        def predict(k: int) -> requests.Response:
            tasks = [{"id": i + 1, "data": {"text": t}} for i, t in enumerate(texts[:k])]
            return requests.post(f"{url}/predict", json={"tasks": tasks, "project": f"{PROJECT}.1", "label_config": config}, timeout=300)

        while predict(1).status_code == 503:
            pass
        out["startup_to_first_prediction_s"] = round(time.perf_counter() - started, 2)
        for k in (1, 32):
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                assert predict(k).status_code == 200
                times.append(time.perf_counter() - t0)
            out[f"predict_{k}_p50_ms"] = percentile(times, 0.5)
        health, stop = [], threading.Event()

        def poll():
            while not stop.is_set():
                t0 = time.perf_counter()
                requests.get(f"{url}/health", timeout=30)
                health.append(time.perf_counter() - t0)
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        hooks = []
        for i in range(200):
            sample = SAMPLES[i % len(SAMPLES)]
            t0 = time.perf_counter()
            body = event(n + 1 + i, sample)
            body["project"]["label_config"] = config  # the project's own label space, not bench.load's catalog one
            assert requests.post(f"{url}/webhook", json=body, timeout=30).status_code == 200
            hooks.append(time.perf_counter() - t0)
        stop.set()
        poller.join()
        out.update(webhook_p50_ms=percentile(hooks, 0.5), webhook_p99_ms=percentile(hooks, 0.99),
                   health_p99_ms=percentile(health, 0.99), health_max_ms=percentile(health, 1.0))
    finally:
        stop_process(process)
    return out


def measure(n: int, seed: int, timeout: float, skip: set[str], departments: int, steps: tuple[str, ...]) -> dict:
    config, names = label_space(departments)
    row: dict = {"labels": n, "departments": len(names)}
    with tempfile.TemporaryDirectory(prefix=f"volume-{n}-") as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        env = {**os.environ, "MODEL_DIR": str(model_dir), "RECONCILE_SECONDS": "0", "LOG_LEVEL": "WARNING"}
        store = Store(model_dir / "store.sqlite3")
        space = parse_label_config(config)
        store.remember_project(PROJECT, config, tuple(space.departments))
        row["ingest_rows_per_s"] = round(fill(store, n, seed, names))
        job, _ = store.request_job(JobKind.REFIT, "bench", PROJECT)
        store.close()
        commands = {"refit": [sys.executable, "-m", "learning.refit", "--job", str(job.id)],
                 "export": [sys.executable, "-m", "backend", "export", "--out", str(Path(tmp) / "export"), "--format", "jsonl", "--format", "csv"],
                 "quality": [sys.executable, "-m", "backend", "quality-report", "--out", str(Path(tmp) / "quality"), "--project", str(PROJECT)],
                 "convergence": [sys.executable, "-m", "backend", "convergence", "--out", str(Path(tmp) / "convergence"), "--project", str(PROJECT)]}
        for name in steps:
            if name in skip:
                row[name] = "skipped: an earlier size ran past --step-timeout"
                continue
            try:
                row[name] = serve(model_dir, env, n, Path(tmp) / "backend.log", config) if name == "serve" else child(commands[name], env, timeout)
            except Exception as exc:  # a step that fails is reported, the others still run
                row[name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            if isinstance(row[name], dict) and row[name].get("timed_out"):
                skip.add(name)
        row["store_bytes_per_label"] = round(sum(p.stat().st_size for p in model_dir.glob("store.sqlite3*")) / n)
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="label counts (default: %(default)s)")
    parser.add_argument("--step-timeout", type=float, default=1800, help="seconds one step may take (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--departments", type=int, default=70, help="size of the label space (default: the catalog's %(default)s)")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="steps to run after the ingest (default: all)")
    parser.add_argument("--out", type=Path, help="write the rows here as JSON")
    args = parser.parse_args(argv)
    load_catalog()  # fail early if the catalog is missing
    skip: set[str] = set()
    rows = [measure(n, args.seed, args.step_timeout, skip, args.departments, tuple(args.steps)) for n in args.sizes]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "cpu_count": os.cpu_count(),
                                        "peak_rss_mb_of_this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)},
                                       ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
