"""Importing a centre's past tickets at volume (issue 16): rows/s, peak memory and store size of
``python -m backend import-history`` on N synthetic tickets, and of importing the same file a second time.

    nice -n 10 .venv/bin/python -m bench.history_import --rows 100000 --out bench/results/history_import_100k.json

The tickets are the 120 sample tickets with edits (a place, a date, a number and a closing phrase drawn at random,
so every text is distinct), each with its department, written as a catalog alias in ALIAS_SHARE of the rows; BAD_SHARE
of the rows are bad in one of three ways (unknown department, empty text, a repeated ticket id), as a real export is.
The import runs as its own process, as an operator runs it, into a fresh SQLite store under a temporary MODEL_DIR;
its peak RSS is the process's own (ru_maxrss of the child), so generating the file does not count.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from annotation_config.catalog import DEFAULT_LABELING_CONFIG, SAMPLE_TICKETS, load_catalog
from core.labeling import parse_label_config
from core.store import Store

PROJECT = 1
ALIAS_SHARE = 0.2
BAD_SHARE = 0.01
PLACES = ("幸福里小区", "城南花园", "滨江一号", "翠湖苑", "金桥新村", "阳光水岸", "锦绣家园", "东湖名邸", "梧桐苑", "长安里",
          "高新区", "经开区", "老城区", "北站附近", "人民路", "解放路", "建设路", "中山路")
CLOSINGS = ("要求尽快处理。", "希望相关部门核实。", "请给予答复。", "已多次反映未果。", "", "情况紧急。")
HEADER = ("工单编号", "诉求内容", "承办单位")


def synthetic_rows(n: int, seed: int = 0):
    """(ticket id, text, department as written) for n tickets, BAD_SHARE of them bad."""
    rng = random.Random(seed)
    samples = [json.loads(line) for line in SAMPLE_TICKETS.read_text(encoding="utf-8").splitlines() if line.strip()]
    aliases = {d.name: d.aliases for d in load_catalog().departments}
    for i in range(n):
        sample = samples[rng.randrange(len(samples))]
        text = (f"{rng.randint(1, 12)}月{rng.randint(1, 28)}日，{rng.choice(PLACES)}{rng.randint(1, 40)}号楼居民来电："
                f"{sample['text']}{rng.choice(CLOSINGS)}（编号{rng.randrange(10**6)}）")
        department = sample["department"]
        if aliases[department] and rng.random() < ALIAS_SHARE:
            department = rng.choice(aliases[department])
        ticket_id = f"GD{2020 + i % 5}{i:09d}"
        if rng.random() < BAD_SHARE:
            bad = rng.randrange(3)
            if bad == 0:
                department = "区街道办事处（已撤销）"
            elif bad == 1:
                text = ""
            else:
                ticket_id = f"GD{2020 + (i - 1) % 5}{i - 1:09d}" if i else ticket_id
        yield ticket_id, text, department


def write_file(path: Path, n: int) -> None:
    if path.suffix == ".xlsx":
        import openpyxl

        book = openpyxl.Workbook(write_only=True)
        sheet = book.create_sheet("工单")
        sheet.append(HEADER)
        for row in synthetic_rows(n):
            sheet.append(row)
        book.save(path)
    elif path.suffix == ".csv":
        with path.open("w", encoding="gb18030", newline="") as f:  # what a Chinese Windows export writes
            writer = csv.writer(f)
            writer.writerow(HEADER)
            writer.writerows(synthetic_rows(n))
    else:
        with path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(dict(zip(HEADER, row)), ensure_ascii=False) + "\n" for row in synthetic_rows(n))


def run_import(path: Path, model_dir: Path) -> dict:
    """One import as its own process: wall time, the child's peak RSS and its report."""
    report = model_dir / f"report-{time.monotonic_ns()}.json"
    env = {**os.environ, "MODEL_DIR": str(model_dir)}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "backend", "import-history", str(path), "--project", str(PROJECT),
                              "--report", str(report)], env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the import failed with exit code {os.waitstatus_to_exitcode(status)}")
    result = json.loads(report.read_text(encoding="utf-8"))
    return {"seconds": round(seconds, 1), "rows_per_second": round(result["rows"] / seconds), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "longest_transaction_s": result["longest_write_s"],
            "imported": result["imported"], "already_stored": result["already_stored"], "skipped": result["skipped"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000], help="file sizes to measure (default: %(default)s)")
    parser.add_argument("--format", choices=("csv", "jsonl", "xlsx"), default="csv", help="file format (default: %(default)s, GB18030)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    results = []
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="history-bench-") as tmp:
            tmp = Path(tmp)
            path = tmp / f"past.{args.format}"
            started = time.perf_counter()
            write_file(path, n)
            written = time.perf_counter() - started
            model_dir = tmp / "model"
            model_dir.mkdir()
            config = DEFAULT_LABELING_CONFIG.read_text(encoding="utf-8")
            Store(model_dir / "store.sqlite3").remember_project(PROJECT, config, parse_label_config(config).departments)
            first = run_import(path, model_dir)
            store_mib = (model_dir / "store.sqlite3").stat().st_size / 2**20
            wal = model_dir / "store.sqlite3-wal"  # the write-ahead log keeps its largest size until the store closes
            wal_mib = wal.stat().st_size / 2**20 if wal.exists() else 0.0
            second = run_import(path, model_dir)
            row = {"rows": n, "format": args.format, "file_mib": round(path.stat().st_size / 2**20, 1), "file_written_s": round(written, 1),
                   "first_import": first, "second_import": second, "store_mib": round(store_mib, 1), "wal_mib": round(wal_mib, 1),
                   "store_bytes_per_label": round(store_mib * 2**20 / max(first["imported"], 1))}
            results.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "results": results},
                                       ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
