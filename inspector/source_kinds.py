"""Which thread serves each `kind:` of source in the daemon config: one registry, one builder a kind.

A builder gets the source's settings, the active scorer (its card says what input the model takes),
the daemon's metrics, the journal path and the callbacks every source reports through. Adding a
kind of source is one module under sources/, one settings class in config.py, one entry here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .card import ImageInput, TabularInput
from .errors import ConfigError
from .scorer import Scorer
from .sinks.metrics import Metrics
from .sources.base import Source


def _require(settings, scorer: Scorer, kind: type) -> None:
    if not isinstance(scorer.card.input, kind):
        wanted = "images" if kind is ImageInput else "traffic rows"
        raise ConfigError(f"field 'sources' ({settings.name}): a {settings.kind} source "
                          f"{'with payload ' + settings.payload + ' ' if hasattr(settings, 'payload') else ''}"
                          f"delivers {wanted}, but {scorer.path} is a {scorer.card.input.kind} model")


def _camera(settings, scorer: Scorer, metrics: Metrics, journal: Path, callbacks: dict) -> Source:
    from .sources.camera import CameraSourceThread

    _require(settings, scorer, ImageInput)
    return CameraSourceThread(settings, **callbacks)


def _folder(settings, scorer: Scorer, metrics: Metrics, journal: Path, callbacks: dict) -> Source:
    from .sources.folder import FolderSourceThread

    _require(settings, scorer, ImageInput)
    return FolderSourceThread(settings, settings.max_pixels or scorer.card.input.max_pixels, journal=journal, **callbacks)


def _count_unknown(metrics: Metrics) -> Callable[[str, str, int], None]:
    return lambda name, column, n: metrics.unknown_categories.labels(name, column).inc(n)


def _traffic(settings, scorer: Scorer, metrics: Metrics, journal: Path, callbacks: dict) -> Source:
    from .sources.traffic import TrafficSourceThread

    _require(settings, scorer, TabularInput)
    return TrafficSourceThread(settings, scorer.card.input, on_unknown=_count_unknown(metrics),
                               on_connection_refused=lambda name: metrics.connections_refused.labels(name).inc(),
                               **callbacks)


def _redis_stream(settings, scorer: Scorer, metrics: Metrics, journal: Path, callbacks: dict) -> Source:
    try:
        from .sources.redis_stream import RedisStreamSourceThread
    except ImportError as exc:
        raise ConfigError(f"field 'sources' ({settings.name}): a redis_stream source needs the 'scale' extra "
                          f"({exc.name} is not installed): pip install 'qinspector[scale]'") from None

    _require(settings, scorer, TabularInput if settings.payload == "rows" else ImageInput)
    metrics.redeliveries.labels(settings.name)

    def lag(name: str, lag: int, pending: int) -> None:
        metrics.stream_lag.labels(name).set(lag)
        metrics.stream_pending.labels(name).set(pending)

    return RedisStreamSourceThread(settings, scorer.card.input, on_unknown=_count_unknown(metrics),
                                   on_redelivery=lambda name, n: metrics.redeliveries.labels(name).inc(n),
                                   on_lag=lag, **callbacks)


BUILDERS: dict[str, Callable[..., Source]] = {"camera": _camera, "folder": _folder, "traffic": _traffic,
                                              "redis_stream": _redis_stream}


def build_source(settings, scorer: Scorer, metrics: Metrics, journal: Path, callbacks: dict) -> Source:
    return BUILDERS[settings.kind](settings, scorer, metrics, journal, callbacks)
