"""The flagd-testbed's gherkin scenarios (testbed/gherkin, v3.9.0), run with
the published OpenFeature Python SDK and flagd provider in RPC mode against
the real datalayer binary.

Step definitions are written here from the scenarios' text. Which scenarios
a bare server cannot run is decided in `skip_reason`, from each scenario's
tags (feature, scenario and Examples tags are all pytest marks here), and
printed as the skip reason.

Servers: one shared testbed server for scenarios that only evaluate, and a
server of their own for scenarios that lose the connection (the server is
SIGKILLed and started again on the same port) or modify a flag (through
FlagService).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pytest_bdd import parsers
from pytest_bdd import step as any_step

from flagd_support import DEFAULT_FLAG_SET, GHERKIN, TestbedServer
from support import free_port

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent
from openfeature.provider.no_op_provider import NoOpProvider
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import CacheType, ResolverType

# Provider timing for the "stable" provider. The testbed's connection-loss
# scenarios are 1s to 6s long: the provider must notice the loss (STALE)
# well within 1s, move to ERROR after its grace period well within 3s, and
# come back (READY) soon after the server does.
RETRY_BACKOFF_MS = 500
RETRY_BACKOFF_MAX_MS = 500  # the wait between event-stream attempts
RETRY_GRACE_PERIOD_S = 1
EVENT_TIMEOUT_S = 15

# --------------------------------------------------------------------------
# tags -> pytest marks, and which scenarios run


def _testbed_tags() -> set[str]:
    tags: set[str] = set()
    for path in GHERKIN.glob("*.feature"):
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line.startswith("@"):
                tags.update(t[1:] for t in line.split() if t.startswith("@"))
    return tags


def pytest_configure(config):
    for tag in sorted(_testbed_tags()):
        config.addinivalue_line("markers", f"{tag}: flagd-testbed gherkin tag @{tag}")


NOT_MARKS = {"parametrize", "usefixtures", "skip", "skipif", "xfail", "filterwarnings"}


def skip_reason(feature: str, scenario: str, tags: set[str]) -> str | None:
    """Why a bare datalayer server (plaintext gRPC on TCP, the testbed's
    default sources) cannot run this scenario with the RPC provider, or
    None when it runs."""
    if feature == "config":
        return "config.feature: provider option parsing only, no server involved"
    if feature == "sync-payload":
        return "sync-payload.feature: in-process sync payload (flagd.sync.v1 sync metadata); this suite evaluates over RPC"
    if "customCert" in tags:
        return "needs a TLS listener with the testbed's custom certificate (the server is plaintext here)"
    if "unixsocket" in tags:
        return "needs a unix-socket listener (the server listens on TCP)"
    if "targetURI" in tags:
        return "needs envoy in front of the server (targetUri envoy://...)"
    if "forbidden" in tags:
        return "needs envoy answering PERMISSION_DENIED (the testbed's forbidden route)"
    if "metadata-provider" in tags:
        return (
            "needs the testbed's 'metadata' launchpad (source rawflags/selector-flag-combined-metadata.json), "
            "not its default configuration served here"
        )
    if feature == "metadata" and scenario == "Returns metadata":
        return (
            "openfeature-provider-flagd's RPC resolver drops the response metadata (flag_metadata is always "
            "empty in RPC mode); the server's metadata is checked directly in test_flagd_metadata_rpc.py"
        )
    if "fractional-v2" in tags and scenario == "Fractional operator hash edge cases":
        return (
            "@fractional-v2 hash-boundary vectors (murmur3 of the raw string hits 0, 1, i32::MAX, ...); "
            "@fractional-v3 hashes the value's CBOR encoding, so these keys no longer sit on the boundaries"
        )
    # @fractional-single-entry is tagged v2 but its outcome does not depend
    # on the bucketing version: it runs.
    if tags & {"fractional-v1", "fractional-v2"} and "fractional-single-entry" not in tags:
        return "superseded bucketing version (@fractional-v1/@fractional-v2); the server implements @fractional-v3 (CBOR + murmur3)"
    if "deprecated" in tags:
        return "@deprecated scenario, superseded by @no-default-variant whose expectations contradict it"
    if "rpc" not in tags and feature not in ("selector", "metadata"):
        return "in-process/file mode only (not tagged @rpc)"
    return None


def _feature_and_scenario(item) -> tuple[str, str] | None:
    doc = getattr(getattr(item, "obj", None), "__doc__", None) or ""
    path, sep, scenario = doc.partition(".feature: ")
    if not sep:
        return None
    return Path(path).name, scenario


def pytest_collection_modifyitems(config, items):
    for item in items:
        found = _feature_and_scenario(item)
        if found is None:
            continue
        feature, scenario = found
        tags = {m.name for m in item.iter_markers()} - NOT_MARKS
        reason = skip_reason(feature, scenario, tags)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


SCENARIO_KEY = pytest.StashKey[Any]()


def pytest_bdd_before_scenario(request, feature, scenario):
    request.node.stash[SCENARIO_KEY] = scenario


def _needs_own_server(request) -> bool:
    scenario = request.node.stash.get(SCENARIO_KEY, None)
    if scenario is None:
        return True
    return any(
        "connection is lost" in s.name or "the flag was modified" in s.name for s in scenario.steps
    )


# --------------------------------------------------------------------------
# servers


@pytest.fixture(scope="session", autouse=True)
def _openfeature_shutdown():
    yield
    api.shutdown()


@pytest.fixture(scope="session")
def testbed_server(binary, tmp_path_factory):
    """The shared server of the scenarios that neither kill it nor write."""
    server = TestbedServer(binary, tmp_path_factory.mktemp("testbed")).start()
    yield server
    server.stop()


# --------------------------------------------------------------------------
# the scenario's state


EVENTS = {
    "ready": ProviderEvent.PROVIDER_READY,
    "error": ProviderEvent.PROVIDER_ERROR,
    "stale": ProviderEvent.PROVIDER_STALE,
    "change": ProviderEvent.PROVIDER_CONFIGURATION_CHANGED,
}


class EventLog:
    """Every event a handler saw, in order. A check for an event takes the
    first one of its kind after the last event an earlier check took, so a
    chain "ready, then stale, then error, then ready" is checked in order."""

    def __init__(self):
        self._cond = threading.Condition()
        self._events: list[tuple[str, Any]] = []
        self._cursor = 0

    def record(self, kind: str, details: Any) -> None:
        with self._cond:
            self._events.append((kind, details))
            self._cond.notify_all()

    def take(self, kind: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(self._cursor, len(self._events)):
                    if self._events[i][0] == kind:
                        self._cursor = i + 1
                        return self._events[i][1]
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [k for k, _ in self._events]
                    raise AssertionError(
                        f"no {kind} event within {timeout}s after the events already checked; "
                        f"events so far: {seen} (checked up to #{self._cursor})"
                    )
                self._cond.wait(left)


@dataclass
class World:
    request: Any
    options: dict[str, Any] = field(default_factory=dict)
    server: TestbedServer | None = None
    own_server: bool = False
    domain: str = field(default_factory=lambda: f"testbed-{uuid.uuid4().hex[:8]}")
    client: Any = None
    flag_type: str | None = None
    flag_key: str | None = None
    default: Any = None
    targeting_key: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    details: Any = None
    events: EventLog = field(default_factory=EventLog)
    last_change: Any = None

    def context(self) -> EvaluationContext:
        return EvaluationContext(targeting_key=self.targeting_key, attributes=dict(self.attributes))

    def explain(self) -> str:
        """What the server says about the current evaluation, for failures."""
        if self.server is None or not self.server.service.running or self.flag_key is None:
            return ""
        context = dict(self.attributes)
        if self.targeting_key is not None:
            context["targetingKey"] = self.targeting_key
        flag_set = self.options.get("selector") or DEFAULT_FLAG_SET
        try:
            answer = self.server.explain(self.flag_key, context, flag_set=flag_set)
        except Exception as e:  # noqa: BLE001 - only a diagnostic
            return f"\nFlagService.Explain failed: {e}"
        buckets = [
            f"bucket_by={b.bucket_by} hash={b.hash} bucket={b.bucket}/{b.total_weight} -> {b.variant}"
            for b in answer.fractional
        ]
        return (
            f"\nFlagService.Explain({flag_set}/{self.flag_key}, {json.dumps(context)}): "
            f"value={answer.value} variant={answer.variant!r} reason={answer.reason} "
            f"matched={answer.matched!r} error={answer.error!r} fractional={buckets}"
        )


@pytest.fixture
def world(request):
    w = World(request=request)
    yield w
    if w.client is not None:
        # Replacing the provider shuts the old one down in the background
        # (a flagd provider takes ~0.15s to close its channel).
        api.set_provider(NoOpProvider(), w.domain)
    if w.own_server and w.server is not None:
        w.server.stop()


def step(pattern: str):
    """One step text for Given, When and Then alike (a step's keyword in
    the testbed depends on where it stands, not on what it does)."""
    return any_step(parsers.re(pattern))


# --------------------------------------------------------------------------
# values


def typed(type_name: str, text: str) -> Any:
    """A value of a gherkin type name (Boolean, String, Integer, Float,
    Object) from its text."""
    if type_name == "Boolean":
        assert text in ("true", "false"), f"not a Boolean: {text!r}"
        return text == "true"
    if type_name == "String":
        return text
    if type_name in ("Integer", "Long"):
        return int(text)
    if type_name == "Float":
        return float(text)
    if type_name == "Object":
        return json.loads(text)
    raise AssertionError(f"unknown type {type_name!r}")


def plain(v: Any) -> Any:
    """Enum members (Reason, ErrorCode) as their string values."""
    return getattr(v, "value", v)


# --------------------------------------------------------------------------
# steps: provider


@step(r'an option "(?P<name>[^"]+)" of type "(?P<type_name>[^"]+)" with value "(?P<value>.*)"')
def an_option(world: World, name: str, type_name: str, value: str):
    if type_name == "CacheType":
        world.options[name] = CacheType(value)
    elif type_name == "StringList":
        world.options[name] = [v.strip() for v in value.split(",") if v.strip()]
    else:
        world.options[name] = typed(type_name, value)


PROVIDER_OPTIONS = {
    "cache": "cache",
    "selector": "selector",
    "deadlineMs": "deadline_ms",
    "fatalStatusCodes": "fatal_status_codes",
}


@step(r"an? (?P<kind>\w+) flagd provider")
def a_flagd_provider(world: World, kind: str, request):
    kwargs: dict[str, Any] = {}
    for name, value in world.options.items():
        assert name in PROVIDER_OPTIONS, f"option {name!r} is not supported by these steps"
        kwargs[PROVIDER_OPTIONS[name]] = value
    if kind == "stable":
        if _needs_own_server(request):
            world.server = TestbedServer(
                request.getfixturevalue("binary"), request.getfixturevalue("tmp_path") / "server"
            )
            world.own_server = True
            world.server.start()
        else:
            world.server = request.getfixturevalue("testbed_server")
        port = world.server.port
    elif kind == "unavailable":
        port = free_port()  # nothing listens there
    else:
        raise AssertionError(f"no {kind!r} flagd provider here")
    provider = FlagdProvider(
        host="127.0.0.1",
        port=port,
        resolver_type=ResolverType.RPC,
        retry_backoff_ms=RETRY_BACKOFF_MS,
        retry_backoff_max_ms=RETRY_BACKOFF_MAX_MS,
        retry_grace_period=RETRY_GRACE_PERIOD_S,
        **kwargs,
    )
    if kind == "stable":
        api.set_provider_and_wait(provider, world.domain)
    else:
        api.set_provider(provider, world.domain)
    world.client = api.get_client(world.domain)


# --------------------------------------------------------------------------
# steps: flag, context, evaluation


@step(r'an? (?P<type_name>\w+)-flag with key "(?P<key>[^"]+)" and a default value "(?P<default>.*)"')
def a_flag(world: World, type_name: str, key: str, default: str):
    world.flag_type = type_name
    world.flag_key = key
    world.default = typed(type_name, default)


@step(r'a context containing a key "(?P<key>[^"]*)", with type "(?P<type_name>\w+)" and with value "(?P<value>.*)"')
def a_context_key(world: World, key: str, type_name: str, value: str):
    world.attributes[key] = typed(type_name, value)


@step(r'a context containing a targeting key with value "(?P<value>.*)"')
def a_targeting_key(world: World, value: str):
    world.targeting_key = value


@step(
    r'a context containing a nested property with outer key "(?P<outer>[^"]+)" '
    r'and inner key "(?P<inner>[^"]+)", with value "(?P<value>.*)"'
)
def a_nested_property(world: World, outer: str, inner: str, value: str):
    world.attributes.setdefault(outer, {})[inner] = value


EVALUATE = {
    "Boolean": "get_boolean_details",
    "String": "get_string_details",
    "Integer": "get_integer_details",
    "Float": "get_float_details",
    "Object": "get_object_details",
}


@step(r"the flag was evaluated with details")
def evaluated(world: World):
    assert world.client is not None, "no provider yet"
    method = getattr(world.client, EVALUATE[world.flag_type])
    world.details = method(world.flag_key, world.default, world.context())


def _describe(world: World) -> str:
    return f"{world.flag_type}-flag {world.flag_key!r}, context {world.context()}: got {world.details}"


@step(r'the resolved details value should be "(?P<value>.*)"')
def value_should_be(world: World, value: str):
    want = typed(world.flag_type, value)
    got = world.details.value
    same = got == want and type(got) is type(want)
    assert same, f"value: want {want!r}; {_describe(world)}{world.explain()}"


@step(r'the reason should be "(?P<reason>.*)"')
def reason_should_be(world: World, reason: str):
    got = plain(world.details.reason)
    assert got == reason, f"reason: want {reason!r}; {_describe(world)}{world.explain()}"


@step(r'the error-code should be "(?P<code>.*)"')
def error_code_should_be(world: World, code: str):
    got = plain(world.details.error_code)
    want = code or None
    assert got == want, f"error code: want {want!r}; {_describe(world)}{world.explain()}"


@step(r'the variant should be "(?P<variant>.*)"')
def variant_should_be(world: World, variant: str):
    assert world.details.variant == variant, f"variant: want {variant!r}; {_describe(world)}"


@step(r"the resolved metadata should contain")
def metadata_should_contain(world: World, datatable):
    header, *rows = datatable
    assert header == ["key", "metadata_type", "value"], header
    got = dict(world.details.flag_metadata or {})
    for key, type_name, value in rows:
        want = typed(type_name, value)
        assert key in got and got[key] == want, f"metadata {key}: want {want!r}; got {got}"


@step(r"the resolved metadata is empty")
def metadata_is_empty(world: World):
    assert not world.details.flag_metadata, f"metadata: want none; got {world.details.flag_metadata}"


# --------------------------------------------------------------------------
# steps: events and changes


@step(r"an? (?P<kind>\w+) event handler")
def an_event_handler(world: World, kind: str):
    world.client.add_handler(EVENTS[kind], lambda details: world.events.record(kind, details))


@step(r"the (?P<kind>\w+) event handler should have been executed(?: within (?P<ms>\d+)ms)?")
def handler_executed(world: World, kind: str, ms: str | None):
    details = world.events.take(kind, int(ms) / 1000 if ms else EVENT_TIMEOUT_S)
    if kind == "change":
        world.last_change = details


@step(r"an? (?P<kind>\w+) event was fired")
def event_fired(world: World, kind: str):
    handler_executed(world, kind, None)


@step(r"the flag should be part of the event payload")
def flag_in_event_payload(world: World):
    assert world.last_change is not None, "no change event was checked"
    changed = world.last_change.flags_changed or []
    assert world.flag_key in changed, f"{world.flag_key!r} not in the change event's flags {changed}"


@step(r"the connection is lost for (?P<seconds>\d+)s")
def connection_lost(world: World, seconds: str):
    assert world.own_server, "this scenario must have a server of its own"
    world.server.lose_connection(float(seconds))


@step(r"the flag was modified")
def flag_modified(world: World):
    """The testbed's changing-flag (flags/changing-flag.json) switches its
    defaultVariant between foo and bar, written through FlagService."""
    assert world.own_server, "this scenario must have a server of its own"
    world.server.toggle_default_variant("changing-flag")
