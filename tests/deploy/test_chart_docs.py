"""values.yaml, values.schema.json, the chart README and the service's own
settings schema (docs/configuration.schema.json) kept in step: a value, a
config section or an object kind named in one is in the others."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import yaml

from deploy_helpers import CHART, MONITORING_APIS, REPO, FULL_VALUES, manifests, render

README = CHART / "README.md"
# Helm itself adds `global` (values shared with a parent chart).
HELM_OWNED = {"global"}
# Settings the chart derives itself; a section with nothing else is not
# offered under `config`.
CHART_OWNED = {"server": {"addr"}, "redis": {"url", "mode"}, "metrics": {"enabled", "addr"}}


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def chart_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def product_sections() -> dict[str, set[str]]:
    schema = json.loads((REPO / "docs" / "configuration.schema.json").read_text())
    return {name: set(sub["properties"]) for name, sub in schema["properties"].items()}


def settable_sections() -> set[str]:
    """Sections a user can write under `config`: those with a key the chart
    does not own."""
    return {s for s, keys in product_sections().items() if keys - CHART_OWNED.get(s, set())}


def readme_rows() -> list[tuple[list[str], str]]:
    """(keys, meaning) of every row of the README's values table; `a.b` /
    `c` names a.b and a.c."""
    section = README.read_text().split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    table = section.strip().split("\n\n", 1)[0]  # the first table of the section
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in {"key", "---"} or set(cells[0]) <= {"-"}:
            continue
        keys = re.findall(r"`([^`]+)`", cells[0])
        assert keys, line
        first = keys[0]
        parent = first.rsplit(".", 1)[0] + "." if "." in first else ""
        rows.append(([first] + [k if "." in k else parent + k for k in keys[1:]], cells[2]))
    return rows


def leaf_paths(node: Any, prefix: str = "") -> list[str]:
    """Every value path of values.yaml down to a scalar, a list or an empty map."""
    if isinstance(node, dict) and node:
        paths = []
        for key, sub in node.items():
            paths += leaf_paths(sub, f"{prefix}{key}.")
        return paths
    return [prefix.rstrip(".")]


def has_path(node: Any, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def covers(key: str, path: str) -> bool:
    key = key.removesuffix(".*")
    return path == key or path.startswith(key + ".")


# --- values.yaml and the schema ------------------------------------------------------


def test_values_and_schema_have_the_same_top_level_keys() -> None:
    in_values = set(values())
    in_schema = set(chart_schema()["properties"])
    assert not in_values - in_schema, f"values.yaml keys the schema lacks: {sorted(in_values - in_schema)}"
    extra = in_schema - in_values - HELM_OWNED
    assert not extra, f"schema keys with no default in values.yaml: {sorted(extra)}"


def test_values_yaml_passes_its_own_schema() -> None:
    # The same check Helm makes at install time, on the defaults alone.
    jsonschema.Draft7Validator(chart_schema()).validate(values())
    jsonschema.Draft7Validator(chart_schema()).validate(FULL_VALUES)


def test_schema_file_is_in_the_form_the_settings_test_writes() -> None:
    # tests/it/config.rs rewrites the `config` subtree and compares the whole
    # file with serde_json's pretty printing (keys in file order): hand edits
    # elsewhere must keep that form, or that test fails.
    text = (CHART / "values.schema.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


# --- the README ----------------------------------------------------------------------


def test_every_readme_key_is_a_value() -> None:
    rows = readme_rows()
    assert len(rows) > 60
    for keys, _ in rows:
        for key in keys:
            assert has_path(values(), key.removesuffix(".*")), f"README documents `{key}`, not in values.yaml"


def test_every_value_is_in_the_readme() -> None:
    documented = [k for keys, _ in readme_rows() for k in keys]
    for path in leaf_paths(values()):
        assert any(covers(k, path) for k in documented), f"values.yaml `{path}` is not in the README table"


def test_config_sections_in_the_readme_are_the_services() -> None:
    # The `config` row names the sections a user can set: every one of them
    # exists in docs/configuration.schema.json, and none is left out.
    ((_, meaning),) = [(keys, m) for keys, m in readme_rows() if keys == ["config"]]
    named = set(re.findall(r"`(\w+)`", meaning.split("sections", 1)[1].split(";", 1)[0]))
    assert named, meaning
    unknown = named - set(product_sections())
    assert not unknown, f"README names config sections the service does not have: {sorted(unknown)}"
    missing = settable_sections() - named
    assert not missing, f"README's config row leaves out sections: {sorted(missing)}"


def test_config_sections_in_values_yaml_are_the_services() -> None:
    text = (CHART / "values.yaml").read_text()
    comment = text.split("\nconfig:\n", 1)[0].rsplit("\n\n", 1)[1]
    listed = comment.split("the sections", 1)[1].split("(", 1)[0]
    named = set(re.findall(r"\b([a-z]+)\b", listed.replace("and", " ").replace("#", " ")))
    assert named == settable_sections(), f"values.yaml's config comment lists {sorted(named)}"


def test_config_keys_named_in_the_readme_exist() -> None:
    # `config.<section>.<key>` anywhere in the README is a real setting.
    sections = product_sections()
    text = README.read_text()
    found = re.findall(r"`config\.(\w+)\.(\w+)`", text)
    assert ("telemetry", "otlp_endpoint") in found
    for section, key in found:
        assert key in sections.get(section, set()), f"README names config.{section}.{key}"


def test_readme_documents_opentelemetry() -> None:
    text = README.read_text()
    assert "OpenTelemetry" in text
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_RESOURCE_ATTRIBUTES", "config.telemetry.service_name"):
        assert name in text, name
    assert "service_name" in product_sections()["telemetry"]


def test_readme_lists_every_kind_the_chart_creates() -> None:
    text = README.read_text().split("What it creates:", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\*\*(\w+)\*\*", text))
    rendered = {d["kind"] for d in manifests(render(FULL_VALUES, api_versions=MONITORING_APIS))}
    rendered |= {d["kind"] for d in manifests(render({"redis": {"url": "redis://r:6379"}}))}
    assert rendered == listed, f"rendered {sorted(rendered)}, README lists {sorted(listed)}"


def test_readme_alert_table_is_the_rules() -> None:
    text = README.read_text().split("### Alerts", 1)[1].split("\n### ", 1)[0]
    listed = set(re.findall(r"^\| `(Datalayer\w+)` \|", text, re.M))
    rule = [d for d in manifests(render({"metrics": {"prometheusRule": {"enabled": True}}}, api_versions=MONITORING_APIS))
            if d["kind"] == "PrometheusRule"][0]
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert listed == alerts
