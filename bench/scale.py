"""Throughput and tail latency of /webhook and /predict: one replica on SQLite beside two replicas on PostgreSQL.

    .venv/bin/python -m bench.scale --duration 60 --out bench/results/scale_cpu.json

Both set-ups run in the same invocation, one after the other, on 127.0.0.1 only: the backend processes (instant
model, as `python -m backend serve` runs), PostgreSQL from Debian's packages for the second, and the load from this
process: client threads sending annotation webhooks (every one a new label) and /predict calls of 8 tickets,
spread round-robin over the replicas as a load balancer would. At the end every acknowledged label must be in the
store exactly once. On one small machine the replicas, the database and the load generator share the same cores,
so the figures say what a set-up carries per core, not what more machines would add.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from annotation_config.catalog import DEFAULT_LABELING_CONFIG
from bench.load import SAMPLES, event
from core.settings import Settings
from core.store import Store
from tools import local_services
from tools.demo import start_backend, stop_process
from tools.local_label_studio import free_port

CONFIG = DEFAULT_LABELING_CONFIG.read_text(encoding="utf-8")


def drive(urls: list[str], duration: float, clients: int, first_id: int) -> dict:
    latencies: dict[str, list[float]] = {"/webhook": [], "/predict": []}
    errors: dict[str, int] = {"/webhook": 0, "/predict": 0}
    acknowledged: list[int] = []
    lock, stop = threading.Lock(), threading.Event()
    ids, targets = itertools.count(first_id), itertools.cycle(urls)

    def client(kind: str):
        session = requests.Session()
        while not stop.is_set():
            with lock:
                url, annotation_id = next(targets), next(ids)
            sample = SAMPLES[annotation_id % len(SAMPLES)]
            started = time.perf_counter()
            try:
                if kind == "/webhook":
                    response = session.post(f"{url}/webhook", json=event(annotation_id, sample), timeout=30)
                else:
                    tasks = [{"id": annotation_id * 10 + i, "data": {"text": SAMPLES[(annotation_id + i) % len(SAMPLES)]["text"]}}
                             for i in range(8)]
                    response = session.post(f"{url}/predict", json={"tasks": tasks, "project": "1.1", "label_config": CONFIG}, timeout=30)
                ok = response.status_code == 200
            except requests.RequestException:
                ok = False
            elapsed = time.perf_counter() - started
            with lock:
                latencies[kind].append(elapsed)
                errors[kind] += not ok
                if ok and kind == "/webhook":
                    acknowledged.append(annotation_id)

    threads = [threading.Thread(target=client, args=("/webhook" if n % 2 == 0 else "/predict",), daemon=True) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    stop.wait(duration)
    stop.set()
    for thread in threads:
        thread.join(60)
    elapsed = time.perf_counter() - started
    report = {}
    for name, values in latencies.items():
        ordered = sorted(values)
        report[name] = {"requests": len(values), "errors": errors[name], "per_second": round(len(values) / elapsed, 1),
                        "p50_ms": round(1000 * statistics.median(ordered), 1) if ordered else None,
                        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1) if ordered else None}
    return {"endpoints": report, "acknowledged": acknowledged}


def run_setup(name: str, replicas: int, store_url: str, work: Path, duration: float, clients: int) -> dict:
    env = {"INSTANT_REFIT_SECONDS": "5", "RECONCILE_SECONDS": "0", "LOG_LEVEL": "WARNING", "THREADS": "8",
           **({"STORE_URL": store_url} if store_url else {})}
    processes, urls = [], []
    try:
        for n in range(replicas):
            port = free_port()
            processes.append(start_backend(Settings(), work / "model", port, None, work / f"{name}-{n}.log", extra_env=env))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            requests.post(f"{url}/setup", json={"project": "1.1", "schema": CONFIG}, timeout=30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(requests.get(f"{u}/health", timeout=5).json()["projects"].get("1") for u in urls):
            time.sleep(0.5)
        result = drive(urls, duration, clients, first_id=1)
        store = Store(store_url or work / "model" / "store.sqlite3")
        stored = [l.annotation_id for l in store.labels(1)]
        acknowledged = set(result.pop("acknowledged"))
        result["labels"] = {"acknowledged": len(acknowledged), "stored": len(stored), "lost": len(acknowledged - set(stored)),
                            "duplicated": len(stored) - len(set(stored)), "integrity_errors": store.integrity_errors()}
        return {"setup": name, "replicas": replicas, "store": "PostgreSQL" if store_url else "SQLite", **result}
    finally:
        for process in processes:
            stop_process(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per set-up (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=8, help="client threads, half webhooks, half /predict (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if problems := local_services.missing():
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    postgres = local_services.start_postgres()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="scale-") as one, tempfile.TemporaryDirectory(prefix="scale-") as two:
            results.append(run_setup("one-sqlite", 1, "", Path(one), args.duration, args.clients))
            results.append(run_setup("two-postgresql", 2, postgres.new_database(), Path(two), args.duration, args.clients))
    finally:
        postgres.stop()
    print("| set-up | endpoint | requests | errors | per s | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|")
    for r in results:
        for endpoint, e in r["endpoints"].items():
            print(f"| {r['replicas']} replica(s), {r['store']} | `{endpoint}` | {e['requests']} | {e['errors']} | {e['per_second']} |"
                  f" {e['p50_ms']} | {e['p99_ms']} |")
        print(f"labels ({r['setup']}): {r['labels']}")
    if args.out:
        args.out.write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0 if all(not r["labels"]["lost"] and not r["labels"]["duplicated"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
