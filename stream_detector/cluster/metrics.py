"""One /metrics for the whole cluster: every actor's own series, labelled with its node.

Each camera actor (and the sink) keeps the single-box daemon's registry (daemon/ops.DaemonMetrics);
``families`` turns it into plain tuples that travel through Ray, and ``MergedCollector`` puts every actor's
samples into one exposition with a ``node`` label (and a ``camera`` label where a series has none, such
as the per-process ones, so two cameras on one node never collide).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import Metric

# (name, type, help, [(sample name, labels, value)])
Family = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]


def families(registry) -> list[Family]:
    return [
        (
            family.name,
            family.type,
            family.documentation,
            [(sample.name, dict(sample.labels), float(sample.value)) for sample in family.samples],
        )
        for family in registry.collect()
    ]


def merge(sources: Iterable[tuple[dict[str, str], list[Family]]]) -> list[Metric]:
    """Families from several actors -> one Metric per name, each sample with its actor's labels added."""
    merged: dict[str, Metric] = {}
    for extra_labels, actor_families in sources:
        for name, kind, documentation, samples in actor_families:
            metric = merged.get(name)
            if metric is None:
                metric = merged[name] = Metric(name, documentation, kind)
            for sample_name, labels, value in samples:
                labelled = dict(labels)
                for key, label in extra_labels.items():
                    labelled.setdefault(key, label)
                metric.add_sample(sample_name, labelled, value)
    return list(merged.values())


class MergedCollector:
    """A prometheus_client collector over ``sources()`` (read at each scrape)."""

    def __init__(self, sources: Callable[[], Iterable[tuple[dict[str, str], list[Family]]]]) -> None:
        self._sources = sources

    def describe(self) -> list:
        return []

    def collect(self):
        yield from merge(self._sources())
