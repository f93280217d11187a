"""Runs last: every RPC of every datalayer service the running binary serves
(asked by reflection) must have been called by the tests above."""

from __future__ import annotations

from datalayer import SERVICES

from .conftest import Stack


def test_every_served_rpc_was_called(stack: Stack) -> None:
    assert "datalayer.ratelimit.v1.RateLimitService" in stack.served
    # Listed by reflection, so called (by the limiters' report()).
    assert "Report" in stack.served["datalayer.ratelimit.v1.RateLimitService"]
    missing = [
        f"/{service}/{method}"
        for service, methods in stack.served.items()
        for method in methods
        if f"/{service}/{method}" not in stack.called
    ]
    assert not missing, f"served but never called by the Python tests: {missing}"


def test_client_knows_every_served_service(stack: Stack) -> None:
    unknown = sorted(set(stack.served) - set(SERVICES))
    assert not unknown, f"served but not in the generated client (run scripts/gen-clients.sh): {unknown}"
