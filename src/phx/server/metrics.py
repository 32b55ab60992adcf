"""A tiny metrics registry rendered in the Prometheus text exposition format (version 0.0.4).

Counters and gauges with optional labels; no histograms yet. No external dependency: the services only
need to count and the format is simple. One registry per app (passed explicitly, never a global)::

    registry = Registry()
    sent = registry.counter("phx_qs_messages_enqueued_total", "Messages put into client queues", ["origin"])
    sent.inc(origin="local")
    registry.render()
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelValues = tuple[str, ...]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names for {name}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._values: dict[LabelValues, float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def _key(self, labels: dict[str, str]) -> LabelValues:
        # As many labels as names and every name present is the same set, without building sets per call.
        if len(labels) == len(self.labelnames):
            try:
                return tuple([str(labels[n]) for n in self.labelnames])
            except KeyError:
                pass
        raise ValueError(f"{self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}")

    def get(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for key in sorted(self._values):
            if key:
                pairs = ",".join(
                    f'{n}="{_escape_label(v)}"' for n, v in zip(self.labelnames, key, strict=True)
                )
                lines.append(f"{self.name}{{{pairs}}} {_format_value(self._values[key])}")
            else:
                lines.append(f"{self.name} {_format_value(self._values[key])}")
        return lines


class Counter(_Metric):
    """A monotonically increasing count (name it ``…_total``)."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot decrease")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    """A value that goes up and down, or is sampled by a callback at render time."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._callback: Callable[[], float] | None = None

    def set(self, value: float, **labels: str) -> None:
        self._values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def set_function(self, callback: Callable[[], float]) -> None:
        """Sample ``callback`` at every render (unlabelled gauges only)."""
        if self.labelnames:
            raise ValueError(f"gauge {self.name} has labels; callbacks only work without")
        self._callback = callback

    def render(self) -> list[str]:
        if self._callback is not None:
            self._values[()] = float(self._callback())
        return super().render()


class Registry:
    """The metrics of one process; names are unique."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _register(self, metric: _Metric) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} already registered")
        self._metrics[metric.name] = metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self._register(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self._register(metric)
        return metric

    def names(self) -> list[str]:
        return sorted(self._metrics)

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self._metrics):
            lines.extend(self._metrics[name].render())
        return "\n".join(lines) + "\n" if lines else ""
