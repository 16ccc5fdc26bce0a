"""deploy/grafana/quakemon.json queries only metrics that quakemon.service.metrics defines, and shows all of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

import quakemon.service.metrics as metrics_module
from quakemon.service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "quakemon.json"
DEFINITION = re.compile(r"\b(Counter|Gauge|Histogram)\(\s*\"(quakemon_\w+)\"")
SERIES_SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count")}


def defined_metrics() -> dict[str, str]:
    """{metric name: kind} as written in quakemon/service/metrics.py."""
    source = Path(metrics_module.__file__).read_text()
    return {name: kind for kind, name in DEFINITION.findall(source)}


def series_names() -> dict[str, str]:
    """{exported series name: metric name}: counters as *_total, histograms as *_bucket/_sum/_count."""
    return {name + suffix: name for name, kind in defined_metrics().items() for suffix in SERIES_SUFFIXES[kind]}


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])
    return out


def test_the_parsed_names_are_the_registered_metrics():
    registered = {m.name for m in Metrics(CollectorRegistry()).registry.collect()}
    assert set(defined_metrics()) == registered and len(registered) >= 15


def test_every_panel_queries_defined_metrics_and_every_metric_has_a_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    names = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    series = series_names()
    shown: set[str] = set()
    ids = []
    for panel in panels(dashboard):
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = re.findall(r"\bquakemon_\w+", target["expr"])
            assert used, (panel["title"], target["expr"])
            unknown = [u for u in used if u not in series]
            assert not unknown, f"panel {panel['title']!r} queries {unknown}, not defined in metrics.py"
            shown |= {series[u] for u in used}
    assert len(ids) == len(set(ids))
    assert shown == set(defined_metrics()), f"metrics without a panel: {set(defined_metrics()) - shown}"
