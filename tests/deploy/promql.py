"""Metric names in PromQL, for checking the chart's alerts and Grafana
dashboard against the metrics the service really exports.

Not a PromQL parser: it removes what cannot hold a metric name (string
literals, label matchers, range and subquery brackets, the label lists of
`by`, `without`, `on`, `ignoring`, `group_left`, `group_right`), then every
identifier left that is not a function call or a keyword is a metric name.
test_monitoring.py checks it against expressions with known answers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "start",
    "end",
    "atan2",
    "inf",
    "nan",
}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(\s*\()?")
# Grafana's label_values(<series selector>, <label>) variable query.
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<expr>.*),\s*(?P<label>\w+)\s*\)\s*$", re.S)
# The suffixes of a histogram's series.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects."""
    if "__name__" in expr:
        raise ValueError(f"selecting by __name__ is not supported here: {expr}")
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def selectors(expr: str, metric: str) -> list[str]:
    """The label-matcher bodies of every selector of `metric` in `expr`
    (`""` for a bare metric name)."""
    found = []
    for match in re.finditer(rf"(?<![\w:]){re.escape(metric)}(?![\w:])(\s*\{{(?P<body>[^{{}}]*)\}})?", expr):
        found.append(match.group("body") or "")
    return found


def family(name: str) -> str:
    """A series name without its histogram suffix."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# --- Grafana dashboards -------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest theirs


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    return list(_panels(dashboard.get("panels", [])))


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    if isinstance(query, dict):
        query = query.get("query", "")
    return str(query)


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and the series
    selectors of its query variables."""
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable_query(variable)
        match = _LABEL_VALUES.match(query)
        if not match:
            raise ValueError(f"variable {variable.get('name')}: unsupported query {query!r}")
        exprs.append(match.group("expr"))
    return exprs


def load_dashboard(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


# --- Prometheus text format -------------------------------------------------------


def scraped_names(text: str) -> set[str]:
    """The series names present in a Prometheus text-format scrape."""
    names = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def sample(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of the series `name` whose labels include `labels`."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(?P<labels>[^}}]*)\}})?\s+(?P<value>\S+)(?:\s+\d+)?", line)
        if not match:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group("labels") or ""))
        if (labels or {}).items() <= got.items():
            return float(match.group("value"))
    return None
