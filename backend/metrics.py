"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0)


class Metrics:
    def __init__(self, snapshot: Callable[[], dict]):
        self.registry = CollectorRegistry()
        self.requests = Counter("backend_http_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("backend_http_request_seconds", "time to answer a request", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("backend_predictions", "tickets predicted", ["model_version"], registry=self.registry)
        self.truncated = Counter("backend_tickets_truncated", "tickets cut to fit the model's context", registry=self.registry)
        self.webhooks = Counter("backend_webhooks", "webhook events received", ["action", "outcome"], registry=self.registry)
        self.rejected = Counter("backend_rejected_requests", "requests refused with a 4xx", ["endpoint", "status"], registry=self.registry)
        self.registry.register(_StateCollector(snapshot))


class _StateCollector:
    """Numbers read from the store at scrape time, so they are right even after a restart."""

    def __init__(self, snapshot: Callable[[], dict]):
        self._snapshot = snapshot

    def describe(self):
        return []

    def collect(self):
        state = self._snapshot()
        labels = GaugeMetricFamily("backend_gold_labels", "gold labels in the store", labels=["split"])
        for split, n in state["labels"].items():
            labels.add_metric([split], n)
        yield labels
        info = InfoMetricFamily("backend_serving_model", "the model version answering /predict")
        info.add_metric([], {"version": state["serving_version"] or ""})
        yield info
        quality = GaugeMetricFamily("backend_model_eval", "score on the frozen evaluation split", labels=["kind", "version", "metric"])
        for kind, version in state["evaluated"].items():
            for metric in ("accuracy", "macro_f1"):
                value = version["metrics"].get(metric)
                if value is not None:
                    quality.add_metric([kind, version["name"], metric], value)
        yield quality
        jobs = GaugeMetricFamily("backend_jobs", "jobs by state", labels=["kind", "status"])
        for (kind, status), n in state["jobs"].items():
            jobs.add_metric([kind, status], n)
        yield jobs
        progress = GaugeMetricFamily("backend_training_progress", "running training job", labels=["job", "what"])
        for job in state["running"]:
            for what in ("step", "total_steps", "loss", "eta_seconds"):
                if job["progress"].get(what) is not None:
                    progress.add_metric([str(job["id"]), what], job["progress"][what])
        yield progress
