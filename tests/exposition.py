"""A Prometheus exposition, parsed as Prometheus parses it, and checked against its
naming conventions: for the tests of the daemon's metrics, in process and served."""

from __future__ import annotations

import re

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


def parse_families(text: str) -> dict[str, Metric]:
    """The exposition, parsed as Prometheus would (it raises on a malformed one)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(parsed: dict[str, Metric], name: str, **labels: str) -> float:
    for family in parsed.values():
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    raise AssertionError(f"no sample {name}{labels}")


def check_conventions(parsed: dict[str, Metric]) -> None:
    """Prometheus naming: one prefix, snake case, the base unit last, _total on counters."""
    for name, family in parsed.items():
        assert re.fullmatch(r"supervisor_daemon_[a-z_]+", name), name
        if "seconds" in name:
            assert name.endswith("_seconds"), name
        for found in family.samples:
            if family.type == "counter":
                assert found.name.endswith(("_total", "_created")), found.name
            if family.type == "histogram":
                assert found.name.endswith(("_bucket", "_sum", "_count", "_created")), found
