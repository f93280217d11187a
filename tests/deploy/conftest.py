"""Session fixtures for tests/deploy: the chart rendered once with default
values and once with everything optional enabled (see deploy_helpers)."""

from __future__ import annotations

from typing import Any

import pytest

from deploy_helpers import FULL_VALUES, MONITORING_APIS, manifests, render


@pytest.fixture(scope="session")
def default_render() -> dict[str, str]:
    return render()


@pytest.fixture(scope="session")
def default_docs(default_render: dict[str, str]) -> list[dict[str, Any]]:
    return manifests(default_render)


@pytest.fixture(scope="session")
def full_render() -> dict[str, str]:
    return render(FULL_VALUES, api_versions=MONITORING_APIS)


@pytest.fixture(scope="session")
def full_docs(full_render: dict[str, str]) -> list[dict[str, Any]]:
    return manifests(full_render)
