"""HTTP layer: the routes Label Studio calls, authentication, JSON in and out, errors that say what was wrong.

``create_app(settings)`` builds one app around one Service; tests build apps with their own settings.
"""
from __future__ import annotations

import hmac
import json
import logging
import sqlite3
import time

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from backend.errors import ApiError
from backend.models import TooManyProjects
from backend.openapi import openapi
from backend.service import Service, project_id_of, project_or_422
from core.jobs import worker_id
from core.settings import Settings
from core.store import DEFAULT_PROJECT
from core.text import brief, clean_json, printable

log = logging.getLogger(__name__)

ROUTES = {"/health", "/setup", "/predict", "/webhook", "/versions", "/metrics", "/status", "/jobs", "/preannotate",
          "/convergence", "/route", "/openapi.json"}


def _read_body(limit: int) -> bytes:
    """The body, or a 413. A chunked body has no Content-Length: it is read to one byte past the limit, so an
    oversized one is refused instead of silently cut."""
    if request.content_length is not None:
        if request.content_length > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes (MAX_REQUEST_BYTES)")
        return request.get_data(cache=True)
    raw = request.environ["wsgi.input"].read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes (MAX_REQUEST_BYTES)")
    return raw


def _json_body(limit: int) -> dict:
    """The request's JSON object, or an ApiError naming the problem (content type, size, encoding, syntax,
    shape). Lone surrogates in strings are replaced here, so nothing downstream meets text it cannot store."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, f"send the body as JSON with 'Content-Type: application/json' (got {brief(mimetype or 'no content type')})")
    raw = _read_body(limit)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the body is not UTF-8 (invalid byte at position {exc.start})") from None
    try:
        body = clean_json(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise ApiError(400, f"the body is not valid JSON: {brief(str(exc), 200)}") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"the body must be a JSON object, not {type(body).__name__}")
    return body


def _page_args() -> tuple[int, int]:
    try:
        page, per_page = int(request.args.get("page", 1)), int(request.args.get("per_page", 100))
    except ValueError:
        raise ApiError(422, "'page' and 'per_page' must be integers") from None
    if page < 1 or not 1 <= per_page <= 1000:
        raise ApiError(422, "'page' must be at least 1 and 'per_page' between 1 and 1000")
    return page, per_page


def _project_arg(default: int | None = DEFAULT_PROJECT) -> int | None:
    raw = request.args.get("project")
    if raw is None:
        return default
    project_id = project_id_of(raw)
    if project_id is None:
        raise ApiError(422, f"'project' must be a Label Studio project id, got {brief(raw)}")
    return project_id


def create_app(settings: Settings, service: Service | None = None) -> Flask:
    app = Flask("backend")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.ensure_ascii = False
    if service is None:
        service = Service(settings)
        service.start()
    app.extensions["service"] = service
    metrics = service.metrics
    replica = worker_id()

    def endpoint_name() -> str:
        path = "/jobs" if request.path.startswith("/jobs/") else request.path
        return path if path in ROUTES else "other"

    @app.before_request
    def authenticate():
        g.started = time.perf_counter()
        if not settings.auth_enabled or (settings.public_health and request.path == "/health"):
            return None
        auth = request.authorization
        ok = (auth is not None and auth.type == "basic"
              and hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
              and hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode()))
        if not ok:
            response = jsonify({"error": "authentication required: HTTP Basic with BASIC_AUTH_USER/BASIC_AUTH_PASS", "status": 401})
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Basic realm="12345 department backend"'
            return response
        return None

    @app.after_request
    def count(response: Response) -> Response:
        endpoint = endpoint_name()
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if hasattr(g, "started"):
            metrics.latency.labels(endpoint).observe(time.perf_counter() - g.started)
        if 400 <= response.status_code < 500:
            metrics.rejected.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        exc.message = printable(exc.message)  # user input inside: one line, bounded, whatever was sent
        log.warning("%s %s -> %d: %s", request.method, brief(request.path), exc.status, exc.message)
        response = jsonify(exc.to_dict())
        if exc.status == 503 and "retry_after" in exc.details:
            response.headers["Retry-After"] = str(exc.details["retry_after"])
        return response, exc.status

    @app.errorhandler(TooManyProjects)
    def too_many_projects(exc: TooManyProjects):
        return api_error(ApiError(422, str(exc)))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = {
            404: f"no such endpoint {brief(request.path)}; this backend serves {', '.join(sorted(ROUTES))}",
            405: f"{request.method} is not allowed on {brief(request.path)}",
            413: f"the body is larger than {settings.max_request_bytes} bytes (MAX_REQUEST_BYTES)",
        }.get(exc.code, exc.description)
        if exc.code != 404:
            log.warning("%s %s -> %d: %s", request.method, brief(request.path), exc.code, message)
        return jsonify({"error": message, "status": exc.code}), exc.code

    @app.errorhandler(sqlite3.OperationalError)
    def store_unwritable(exc: sqlite3.OperationalError):
        log.error("%s %s: the label store could not be written: %s", request.method, brief(request.path), exc)
        return jsonify({"error": f"the label store under MODEL_DIR could not be written ({exc}); nothing was stored. "
                                 "Free disk space or fix permissions; lost annotations come back with the next "
                                 "reconcile (RECONCILE_SECONDS) or Start Training", "status": 503}), 503

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("%s %s failed", request.method, brief(request.path))
        return jsonify({"error": "internal error; the backend log has the details", "status": 500}), 500

    @app.get("/health")
    def health():
        """Cheap enough for Label Studio's 1 s timeout and a load balancer: what this process serves, from memory."""
        versions = {str(line.project_id): line.serving.version for line in service.models.lines()
                    if line.serving is not None and line.ready.is_set()}
        return jsonify({"status": "UP", "model_version": versions.get(str(DEFAULT_PROJECT)), "projects": versions, "replica": replica})

    @app.post("/setup")
    def setup():
        return jsonify(service.setup(_json_body(settings.max_request_bytes)))

    @app.post("/predict")
    def predict():
        return jsonify(service.predict(_json_body(settings.max_request_bytes)))

    @app.post("/webhook")
    def webhook():
        return jsonify(service.webhook(_json_body(settings.max_request_bytes)))

    @app.get("/versions")
    def versions():
        """Label Studio asks with no project (it sends GET without a body): every project's version names then."""
        project_id = _project_arg(default=None)
        if project_id is None:
            return jsonify({"versions": sorted({v.name for v in service.store.versions(limit=10_000, newest_first=True)})})
        page, per_page = _page_args()
        return jsonify(service.versions(project_id, page, per_page))

    @app.get("/jobs")
    def jobs():
        return jsonify(service.jobs_list(_project_arg(default=None)))

    @app.get("/jobs/<job_id>")
    def job(job_id: str):
        return jsonify(service.job(int(job_id) if job_id.isascii() and job_id.isdigit() else job_id))

    @app.post("/jobs")
    def request_job():
        body = _json_body(settings.max_request_bytes) if request.content_length else {}
        reason = body.get("reason") if isinstance(body.get("reason"), str) else "requested through POST /jobs"
        return jsonify(service.request_training(reason[:200], project_or_422(body))), 202

    @app.post("/preannotate")
    def request_preannotation():
        body = _json_body(settings.max_request_bytes)
        project_id = project_or_422(body)
        if project_id == DEFAULT_PROJECT:
            raise ApiError(422, "'project' must be the integer id of a Label Studio project")
        return jsonify(service.request_preannotation(project_id, "requested through POST /preannotate")), 202

    @app.post("/route")
    def route():
        return jsonify(service.route(_json_body(settings.max_request_bytes)))

    @app.get("/openapi.json")
    def contract():
        return jsonify(openapi(settings))

    @app.get("/convergence")
    def convergence():
        return jsonify(service.convergence(_project_arg()))

    @app.get("/status")
    def status():
        return jsonify(service.status())

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    return app
