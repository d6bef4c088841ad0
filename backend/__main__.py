"""Command line of the backend.

    python -m backend                 # serve (gunicorn, one worker process with threads) on HOST:PORT
    python -m backend demo            # a local Label Studio + this backend + the sample tickets, pre-annotated
    python -m backend settings        # every environment variable, its default and meaning
    python -m backend versions        # the model registry under MODEL_DIR
    python -m backend rollback lora-3 # serve an earlier LLM version (the running service hot-swaps to it)
    python -m backend train --follow  # ask the running service for a fine-tuning round and show its progress
    python -m backend preannotate --project 1 --follow   # suggestions for every unlabelled task of a project
    python -m backend convergence --out report/          # are more labels still paying off?
    python -m backend import-history past.xlsx --project 1  # a centre's past tickets as gold labels
    python -m backend evaluate --train T.jsonl --eval E.jsonl --json   # the instant model's scores on a labelled file
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from core.settings import Settings, SettingsError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)
    for noisy in ("httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _json_error(sock, status_int: int, reason: str, message: str) -> None:
    """gunicorn answers requests it cannot parse (a 9 KB header, a broken request line) itself, in HTML; every
    other error of this service is JSON, so these are too."""
    import json

    from gunicorn.util import write_nonblock

    from core.text import printable

    body = json.dumps({"error": printable(f"{reason}: {message}" if message else reason, 300), "status": status_int}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin1")
    write_nonblock(sock, head + body)


def serve(settings: Settings) -> None:
    import gunicorn.util
    from gunicorn.app.base import BaseApplication

    gunicorn.util.write_error = _json_error  # the worker looks it up on the module at every error

    class Server(BaseApplication):
        def load_config(self):
            # One process: it holds the model (and on a GPU only one copy fits); threads keep /health and
            # /webhook answering while a /predict batch runs.
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", settings.threads)
            self.cfg.set("timeout", 300)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("loglevel", settings.log_level.lower())
            self.cfg.set("control_socket_disable", True)

        def load(self):
            from backend.app import create_app

            return create_app(settings)

    logging.getLogger(__name__).info("serving on http://%s:%d (MODEL_DIR=%s)", settings.host, settings.port, settings.model_dir)
    Server().run()


# Commands with their own option parsers, in their own modules: `python -m backend NAME --help` shows them.
SUBCOMMANDS = {
    "export": ("tools.export", "export the gold labels: recipe JSONL, Hugging Face dataset + Parquet, CSV, with a stratified split"),
    "quality-report": ("tools.quality", "ranked suspected label errors (store or JSONL), confusable departments, annotator agreement (HTML + JSON)"),
    "convergence": ("tools.convergence", "the stopping signal: scores across versions and how many suggestions still change (JSON + plot)"),
    "simulate": ("tools.simulation", "replay a labelled JSONL under query strategies and plot the learning curves"),
    "import-history": ("tools.import_history", "import past tickets with the department that handled them (JSONL, CSV, .xlsx) as gold labels"),
    "evaluate": ("tools.evaluate", "fit the instant model on a labelled JSONL as the service does and score it on another "
                 "(accuracy, macro-F1, ECE)"),
}


def _subcommand(name: str, argv: list[str]) -> int:
    import importlib

    return importlib.import_module(SUBCOMMANDS[name][0]).main(argv)


def model_dir_problem(settings: Settings) -> str | None:
    """Fail at start, with a reason, rather than at the first label: the store and the versions live there."""
    try:
        settings.model_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.model_dir / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return f"MODEL_DIR={settings.model_dir} is not writable ({exc.strerror or exc}); point MODEL_DIR at a writable folder"
    return None


def print_versions(settings: Settings, project_id: int | None, limit: int) -> int:
    from core.store import open_store

    store = open_store(settings)
    projects = [project_id] if project_id is not None else store.projects_with_versions()
    for pid in projects:
        total = store.count_versions(pid)
        print(f"project {pid}: {total} versions" + (f", the newest {limit} shown (--limit)" if total > limit else ""))
        print(f"  {'version':<14} {'kind':<8} {'status':<10} {'parent':<12} {'accuracy':>8} {'macro-F1':>8} {'eval n':>6}  created")
        for v in reversed(store.versions(pid, limit=limit, newest_first=True)):
            m = v.metrics
            accuracy = m.get("accuracy") if m.get("accuracy") is not None else "-"
            print(f"  {v.name:<14} {v.kind:<8} {v.status:<10} {v.parent or '-':<12} {accuracy:>8} "
                  f"{m.get('macro_f1') if m.get('macro_f1') is not None else '-':>8} {m.get('n', '-'):>6}  {v.created_at[:19]}")
    if not projects:
        print("no model versions yet")
    return 0


def roll_back(settings: Settings, name: str, project_id: int) -> int:
    from core.jobs import ModelKind
    from core.store import VERSION_NAME, open_store

    if not VERSION_NAME.fullmatch(name):
        print(f"error: {name!r} is not a version name (letters, digits, '.', '_', '-')", file=sys.stderr)
        return 2
    store = open_store(settings)
    version = store.get_version(project_id, name)
    if version is None or version.kind != ModelKind.LLM:
        names = ", ".join(v.name for v in store.versions(project_id, ModelKind.LLM)) or "none"
        print(f"error: project {project_id} has no LLM version {name!r}; its LLM versions: {names}", file=sys.stderr)
        return 2
    if version.path and not (settings.model_path(version.path) / "adapter_config.json").exists():
        print(f"error: the adapter files of {name} are missing from {version.path}", file=sys.stderr)
        return 2
    store.promote_version(project_id, name)
    print(f"{name} is now project {project_id}'s serving LLM version; a running service switches to it within a few seconds")
    return 0


def request_job(settings: Settings, url: str, path: str, body: dict, follow: bool) -> int:
    """Ask the running service for a job (training, pre-annotation) and, with --follow, show its progress bar."""
    import requests

    auth = (settings.basic_auth_user, settings.basic_auth_pass) if settings.auth_enabled else None
    try:
        answer = requests.post(f"{url}{path}", json=body, auth=auth, timeout=10)
    except requests.RequestException as exc:
        print(f"error: the backend at {url} did not answer ({exc}); is it running? (--url)", file=sys.stderr)
        return 2
    if answer.status_code >= 400:
        print(f"error: {answer.json().get('error', answer.text)}", file=sys.stderr)
        return 2
    job_id = answer.json()["job"]
    print(f"job {job_id} {'queued' if answer.json()['created'] else 'was already queued or running'}")
    if not follow:
        return 0
    from tqdm import tqdm

    with tqdm(desc=f"job {job_id}", unit="step") as bar:
        while True:
            job = requests.get(f"{url}/jobs/{job_id}", auth=auth, timeout=10).json()
            progress = job.get("progress") or {}
            bar.total = progress.get("total_steps") or bar.total
            bar.n = progress.get("step") or 0
            bar.set_postfix(status=job["status"], phase=progress.get("phase"), loss=progress.get("loss"))
            bar.refresh()
            if job["finished"]:
                break
            time.sleep(1.0)
    print(f"job {job_id}: {job['status']}" + (f" ({job['error']})" if job.get("error") else "") +
          (f", version {job['version']}" if job.get("version") else ""))
    return 0 if job["status"] != "failed" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend",
        description="Label Studio ML backend that routes 12345 hotline tickets to handling departments. "
        "Configuration comes from environment variables: see 'python -m backend settings'.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the HTTP service (the default)")
    commands.add_parser("settings", help="print every setting as a Markdown table")
    demo = commands.add_parser("demo", help="start Label Studio and the backend with the sample tickets pre-annotated")
    demo.add_argument("--data-dir", default="var/demo", help="where the demo keeps Label Studio's database and MODEL_DIR (default: %(default)s)")
    demo.add_argument("--fresh", action="store_true", help="delete the demo's earlier data first")
    demo.add_argument("--ls-port", type=int, default=8080, help="Label Studio port (default: %(default)s)")
    demo.add_argument("--no-wait", action="store_true", help="set everything up, print the URL, then stop both servers")
    versions = commands.add_parser("versions", help="list model versions with their scores on the frozen evaluation split")
    versions.add_argument("--project", type=int, metavar="ID", help="only this Label Studio project (default: every project)")
    versions.add_argument("--limit", type=int, default=30, help="newest versions shown per project (default: %(default)s)")
    rollback = commands.add_parser("rollback", help="serve an earlier LLM version; the running service follows within seconds")
    rollback.add_argument("version", help="a version name from 'python -m backend versions', e.g. lora-2 or llm-base")
    rollback.add_argument("--project", type=int, required=True, metavar="ID", help="the Label Studio project whose line rolls back")
    train = commands.add_parser("train", help="ask the running service for a fine-tuning round of a project")
    train.add_argument("--project", type=int, required=True, metavar="ID", help="Label Studio project id")
    preannotate = commands.add_parser("preannotate", help="have the running service suggest a department for every "
                                      "unlabelled task of a Label Studio project, then sort the project by uncertainty")
    preannotate.add_argument("--project", type=int, required=True, help="Label Studio project id")
    for command in (train, preannotate):
        command.add_argument("--url", default=None, help="the running backend (default: http://HOST:PORT)")
        command.add_argument("--follow", action="store_true", help="show a progress bar until the job ends")
    for name, (_, help_text) in SUBCOMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command in SUBCOMMANDS:
        return _subcommand(args.command, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    if args.command == "settings":
        from core.settings import TrainingConfig

        print("## Service\n\n" + Settings.describe() + "\n\n## Fine-tuning\n\n" + TrainingConfig.describe())
        return 0
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command in (None, "serve"):
        problem = model_dir_problem(settings)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    if args.command == "versions":
        return print_versions(settings, args.project, args.limit)
    if args.command == "rollback":
        return roll_back(settings, args.version, args.project)
    if args.command == "train":
        return request_job(settings, args.url or f"http://{settings.host}:{settings.port}", "/jobs",
                           {"reason": "python -m backend train", "project": args.project}, args.follow)
    if args.command == "preannotate":
        return request_job(settings, args.url or f"http://{settings.host}:{settings.port}", "/preannotate",
                           {"project": args.project}, args.follow)
    if args.command == "demo":
        from tools.demo import run_demo

        return run_demo(settings, data_dir=args.data_dir, fresh=args.fresh, ls_port=args.ls_port, wait=not args.no_wait)
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
