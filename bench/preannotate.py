"""Pre-annotating a large Label Studio project (issue 16): tasks/s through Label Studio's APIs, and memory.

    nice -n 10 .venv/bin/python -m bench.preannotate --tasks 10000 --out bench/results/preannotate_10k.json

Starts a local Label Studio 1.23.2 and the backend (``python -m backend serve``, instant model, no GPU), creates a
project with the catalog's labeling config and the backend connected, imports --tasks tickets (the sample tickets
with random edits, in chunks through the import API), then runs ``POST /preannotate`` and times it until the job
finishes. Per chunk of 256 the job predicts, writes each task's suggestion row into its data (one PATCH per task:
the annotator's screen, annotator_view.py), and pushes the predictions in one import call. Peak RSS is the
summed high-water mark (VmHWM) of each one's processes.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import requests

from annotation_config.catalog import DEFAULT_LABELING_CONFIG
from bench.volume import ticket
from core.settings import Settings
from tools import local_label_studio
from tools.demo import start_backend, stop_process, wait_for

IMPORT_CHUNK = 5000


def peak_mib(group: int) -> float:
    """The summed high-water marks of the processes of a process group (``python -m backend serve`` runs its
    service in a child process)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == group:
                status = (stat.parent / "status").read_text()
                total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
        except (OSError, StopIteration, ValueError):
            continue  # exited meanwhile, or a kernel thread
    return total / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preannotate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the project (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds the pre-annotation may take (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    row: dict = {"tasks": args.tasks}
    with tempfile.TemporaryDirectory(prefix="preannotate-") as tmp:
        root = Path(tmp)
        ls = local_label_studio.start(root / "label-studio")
        backend = None
        try:
            port = local_label_studio.free_port()
            backend = start_backend(Settings(), root / "model", port, ls, root / "backend.log", {"RECONCILE_SECONDS": "0"})
            url = f"http://127.0.0.1:{port}"
            config = DEFAULT_LABELING_CONFIG.read_text(encoding="utf-8")
            project = ls.api("POST", "/api/projects", json={"title": "bench", "label_config": config}).json()
            ls.api("POST", "/api/ml", json={"url": url, "project": project["id"], "title": "bench"})
            started = time.perf_counter()
            for start in range(0, args.tasks, IMPORT_CHUNK):
                ls.api("POST", f"/api/projects/{project['id']}/import",
                       json=[{"text": ticket(rng, i)[0]} for i in range(start, min(args.tasks, start + IMPORT_CHUNK))])
            row["import_seconds"] = round(time.perf_counter() - started, 1)
            print(f"imported {args.tasks} tasks in {row['import_seconds']} s", flush=True)
            started = time.perf_counter()
            job = requests.post(f"{url}/preannotate", json={"project": project["id"]}, timeout=30).json()["job"]
            status = wait_for(lambda: (s := requests.get(f"{url}/jobs/{job}", timeout=10).json())["finished"] and s, args.timeout, 2.0)
            row["preannotate_seconds"] = round(time.perf_counter() - started, 1)
            row["job"] = status or "timed out"
            row["tasks_per_second"] = round(args.tasks / row["preannotate_seconds"], 1) if status else None
            row["backend_peak_rss_mib"] = round(peak_mib(backend.pid))
            row["label_studio_peak_rss_mib"] = round(peak_mib(ls.process.pid))
        finally:
            if backend is not None:
                stop_process(backend)
            ls.stop()
    print(json.dumps(row, ensure_ascii=False), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
