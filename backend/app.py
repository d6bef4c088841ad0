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
from backend.service import Service, is_id
from core.settings import Settings

log = logging.getLogger(__name__)

ROUTES = {"/health", "/setup", "/predict", "/webhook", "/versions", "/metrics", "/status", "/jobs", "/preannotate",
          "/convergence"}


def _json_body() -> dict:
    """The request's JSON object, or an ApiError naming the problem (content type, encoding, syntax, shape)."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, f"send the body as JSON with 'Content-Type: application/json' (got {mimetype or 'no content type'!r})")
    raw = request.get_data(cache=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the body is not UTF-8 (invalid byte at position {exc.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"the body must be a JSON object, not {type(body).__name__}")
    return body


def create_app(settings: Settings, service: Service | None = None) -> Flask:
    app = Flask("backend")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.ensure_ascii = False
    if service is None:
        service = Service(settings)
        service.start()
    app.extensions["service"] = service
    metrics = service.metrics

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
        log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc.message)
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = {
            404: f"no such endpoint {request.path}; this backend serves {', '.join(sorted(ROUTES))}",
            405: f"{request.method} is not allowed on {request.path}",
            413: f"the body is larger than {settings.max_request_bytes} bytes (MAX_REQUEST_BYTES)",
        }.get(exc.code, exc.description)
        if exc.code != 404:
            log.warning("%s %s -> %d: %s", request.method, request.path, exc.code, message)
        return jsonify({"error": message, "status": exc.code}), exc.code

    @app.errorhandler(sqlite3.OperationalError)
    def store_unwritable(exc: sqlite3.OperationalError):
        log.error("%s %s: the label store could not be written: %s", request.method, request.path, exc)
        return jsonify({"error": f"the label store under MODEL_DIR could not be written ({exc}); nothing was stored. "
                                 "Free disk space or fix permissions; lost annotations come back with the next "
                                 "reconcile (RECONCILE_SECONDS) or Start Training", "status": 503}), 503

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("%s %s failed", request.method, request.path)
        return jsonify({"error": "internal error; the backend log has the details", "status": 500}), 500

    @app.get("/health")
    def health():
        return jsonify({"status": "UP", "model_version": service.models.serving_version})

    @app.post("/setup")
    def setup():
        return jsonify(service.setup(_json_body()))

    @app.post("/predict")
    def predict():
        return jsonify(service.predict(_json_body()))

    @app.post("/webhook")
    def webhook():
        return jsonify(service.webhook(_json_body()))

    @app.get("/versions")
    def versions():
        return jsonify(service.versions())

    @app.get("/jobs")
    def jobs():
        return jsonify(service.jobs_list())

    @app.get("/jobs/<int:job_id>")
    def job(job_id: int):
        return jsonify(service.job(job_id))

    @app.post("/jobs")
    def request_job():
        body = _json_body() if request.content_length else {}
        reason = body.get("reason") if isinstance(body.get("reason"), str) else "requested through POST /jobs"
        return jsonify(service.request_training(reason[:200])), 202

    @app.post("/preannotate")
    def request_preannotation():
        body = _json_body()
        project = body.get("project")
        if not is_id(project):
            raise ApiError(422, "'project' must be the integer id of a Label Studio project")
        return jsonify(service.request_preannotation(project, "requested through POST /preannotate")), 202

    @app.get("/convergence")
    def convergence():
        return jsonify(service.convergence())

    @app.get("/status")
    def status():
        return jsonify(service.status())

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    return app
