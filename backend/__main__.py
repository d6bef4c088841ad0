"""Command line of the backend.

    python -m backend                 # serve (gunicorn, one worker process with threads) on HOST:PORT
    python -m backend demo            # a local Label Studio + this backend + the sample tickets, pre-annotated
    python -m backend settings        # every environment variable, its default and meaning
"""
from __future__ import annotations

import argparse
import logging
import sys

from backend.settings import Settings, SettingsError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)
    for noisy in ("httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def serve(settings: Settings) -> None:
    from gunicorn.app.base import BaseApplication

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
    args = parser.parse_args(argv)

    if args.command == "settings":
        print(Settings.describe())
        return 0
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "demo":
        from backend.demo import run_demo

        return run_demo(settings, data_dir=args.data_dir, fresh=args.fresh, ls_port=args.ls_port, wait=not args.no_wait)
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
