"""Review metrics on the daemon's Prometheus registry: labels given, and the alarms' estimated precision."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from .store import LABELS, ReviewStore


class ReviewMetrics:
    def __init__(self, registry: CollectorRegistry, store: ReviewStore):
        self.store = store
        self.reviews = Counter("inspector_reviews", "Reviews given on the review page, by source and label",
                               ["source", "label"], registry=registry)
        self.precision = Gauge("inspector_review_precision", "Reviewed anomalies confirmed as defects / those "
                               "labelled defect or false alarm (all reviews in the database)", ["source"], registry=registry)
        self.refresh()

    def register_source(self, source: str) -> None:
        for label in LABELS:
            self.reviews.labels(source, label)

    def reviewed(self, item: dict, label: str) -> None:
        self.reviews.labels(item["source"], label).inc()
        self.refresh()

    def refresh(self) -> None:
        for row in self.store.counts("source"):
            if row["precision"] is not None:
                self.precision.labels(row["key"]).set(row["precision"])
