"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

Every label value comes from a closed set (endpoints, webhook actions Label Studio sends, outcomes, model kinds,
project ids the store knows): a client cannot create series by sending new strings, and no string can break the
exposition format.
"""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0)
# The webhook actions Label Studio 1.23 sends (protocol notes §3.4); anything else is counted as "other".
WEBHOOK_ACTIONS = frozenset({
    "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "ANNOTATIONS_CREATED", "START_TRAINING", "PROJECT_UPDATED",
    "PROJECT_CREATED", "PROJECT_DELETED", "TASKS_CREATED", "TASKS_DELETED", "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED",
    "LABEL_LINK_DELETED", "REVIEW_CREATED", "REVIEW_UPDATED", "REVIEWS_DELETED",
})
OUTCOMES = frozenset({"created", "updated", "unchanged", "stale", "deleted", "acknowledged", "queued", "not gold: skipped"})


class Metrics:
    def __init__(self, snapshot: Callable[[], dict]):
        self.registry = CollectorRegistry()
        self.requests = Counter("backend_http_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("backend_http_request_seconds", "time to answer a request", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("backend_predictions", "tickets predicted", ["model_kind"], registry=self.registry)
        self.truncated = Counter("backend_tickets_truncated", "tickets cut to fit the model's context", registry=self.registry)
        self.webhooks = Counter("backend_webhooks", "webhook events received", ["action", "outcome"], registry=self.registry)
        self.rejected = Counter("backend_rejected_requests", "requests refused with a 4xx", ["endpoint", "status"], registry=self.registry)
        self.registry.register(_StateCollector(snapshot))

    def count_webhook(self, action: str, outcome: str) -> None:
        self.webhooks.labels(action if action in WEBHOOK_ACTIONS else "other", outcome if outcome in OUTCOMES else "other").inc()

    def count_predictions(self, version: str, tickets: int, truncated: int) -> None:
        self.predictions.labels("llm" if not version.startswith("instant-") else "instant").inc(tickets)
        self.truncated.inc(truncated)


class _StateCollector:
    """Numbers kept by the store and the models, read at scrape time, so they are right even after a restart."""

    def __init__(self, snapshot: Callable[[], dict]):
        self._snapshot = snapshot

    def describe(self):
        return []

    def collect(self):
        state = self._snapshot()
        labels = GaugeMetricFamily("backend_gold_labels", "gold labels in the store", labels=["project", "split"])
        serving = GaugeMetricFamily("backend_serving_model", "1 for the model version answering a project's /predict",
                                    labels=["project", "version"])
        ready = GaugeMetricFamily("backend_project_ready", "1 once a project's model for its labeling config is ready", labels=["project"])
        quality = GaugeMetricFamily("backend_model_eval", "score on the project's frozen evaluation split",
                                    labels=["project", "kind", "version", "metric"])
        for project in state["projects"]:
            pid = str(project["project"])
            labels.add_metric([pid, "train"], project["labels"]["labels"] - project["labels"]["eval"])
            labels.add_metric([pid, "eval"], project["labels"]["eval"])
            ready.add_metric([pid], float(project["state"] == "ready"))
            if project["serving_version"]:
                serving.add_metric([pid, project["serving_version"]], 1.0)
            for kind, version in project["models"].items():
                for metric in ("accuracy", "macro_f1"):
                    if version["metrics"].get(metric) is not None:
                        quality.add_metric([pid, kind, version["name"], metric], version["metrics"][metric])
        yield from (labels, serving, ready, quality)
        jobs = GaugeMetricFamily("backend_jobs", "jobs by state", labels=["kind", "status"])
        for (kind, status), n in state["jobs"].items():
            jobs.add_metric([kind, status], n)
        yield jobs
        progress = GaugeMetricFamily("backend_training_progress", "running job", labels=["job", "project", "what"])
        for job in state["running"]:
            for what in ("step", "total_steps", "loss", "eta_seconds"):
                if job["progress"].get(what) is not None:
                    progress.add_metric([str(job["id"]), str(job["project_id"]), what], job["progress"][what])
        yield progress
        failed = GaugeMetricFamily("backend_last_refit_failed", "1 when a project's last instant-model refit failed (the last good"
                                   " model keeps serving)", labels=["project"])
        for project in state["projects"]:
            failed.add_metric([str(project["project"])], float((project["last_refit"] or {}).get("status") == "failed"))
        yield failed
        yield from self._auto_routing(state["projects"])

    @staticmethod
    def _auto_routing(projects: list[dict]):
        """Per project and serving version: whether audits stopped auto-routing, the proven coverage, what was decided
        and the confidence-sequence bounds on the realised precision (alert on stopped == 1)."""
        stopped = GaugeMetricFamily("backend_auto_routing_stopped", "1 when audits showed the serving version below AUTO_ROUTE_PRECISION"
                                    " and every ticket goes to review", labels=["project", "version"])
        coverage = GaugeMetricFamily("backend_auto_routing_coverage", "share of calibration rows the version's thresholds route without a"
                                     " person", labels=["project", "version"])
        routed = GaugeMetricFamily("backend_routed_tickets", "tickets routed by POST /route", labels=["project", "version", "decision"])
        bound = GaugeMetricFamily("backend_audit_precision_bound", "realised precision of audited auto-routed tickets: confidence-sequence"
                                  " bounds", labels=["project", "version", "bound"])
        for project in projects:
            state = project.get("auto_routing") or {}
            if "model_version" not in state:
                continue
            key = [str(project["project"]), state["model_version"]]
            stopped.add_metric(key, float(state["state"] == "stopped"))
            coverage.add_metric(key, state["coverage"] or 0.0)
            for decision, n in state["routed"].items():
                routed.add_metric([*key, decision], n)
            for which in ("lower", "upper"):
                bound.add_metric([*key, which], state["audit"][which])
        yield from (stopped, coverage, routed, bound)
