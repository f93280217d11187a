"""The datalayer binary serving the flagd-testbed, as flagd's testbed serves
it (its "default" launchpad configuration): the two flag sources of
`testbed/sources/` under the selectors a `flagd-selector` names, plus the
static evaluation-context value `injectedmetadata=set`.

A `TestbedServer` can be killed like a crash and started again on the same
port, which is what the testbed's "the connection is lost for Ns" means.
The FlagService admin API is reached through the generated Python stubs of
the datalayer client package (clients/python).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import types
from pathlib import Path

import grpc

from support import Service, poll

HERE = Path(__file__).resolve().parent
TESTBED = HERE / "testbed"
GHERKIN = TESTBED / "gherkin"

# The flag sources: selector -> file, as in testbed/README.md.
SOURCES = {
    "flags/allFlags.json": TESTBED / "sources" / "allFlags.json",
    "rawflags/selector-flags.json": TESTBED / "sources" / "selector-flags.json",
}
DEFAULT_FLAG_SET = "flags/allFlags.json"


def testbed_config() -> str:
    """The TOML configuration: the address comes from the environment
    (support.Service sets DATALAYER__SERVER__ADDR and a free metrics port)."""
    sources = ",\n".join(
        f"  {{ selector = {json.dumps(sel)}, path = {json.dumps(str(path))} }}"
        for sel, path in SOURCES.items()
    )
    return (
        "[telemetry]\n"
        'log_format = "json"\n'
        "[flags]\n"
        f"sources = [\n{sources},\n]\n"
        'static_context = { injectedmetadata = "set" }\n'
    )


def flags_api():
    """`(flags_pb2, flags_pb2_grpc)` of datalayer.flags.v1, from the datalayer
    client package installed in .venv (clients/python).

    `datalayer/__init__.py` imports the whole hand-written client; should that
    fail to import, the generated subpackage (which needs nothing of it) is
    loaded on its own by giving `datalayer` a bare package object.
    """
    try:
        from datalayer.flags.v1 import flags_pb2, flags_pb2_grpc  # type: ignore

        return flags_pb2, flags_pb2_grpc
    except SyntaxError:
        pass
    for name in [n for n in sys.modules if n == "datalayer" or n.startswith("datalayer.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("datalayer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the datalayer client package is not installed in .venv (clients/python)")
    package = types.ModuleType("datalayer")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["datalayer"] = package
    from datalayer.flags.v1 import flags_pb2, flags_pb2_grpc  # type: ignore

    return flags_pb2, flags_pb2_grpc


class TestbedServer:
    """The datalayer binary with the testbed's flags, in-process store.

    `lose_connection(seconds)` SIGKILLs it and, in the background, starts it
    again on the same port `seconds` later.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, binary: Path, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.service = Service(binary, workdir, testbed_config(), None)
        self.port = self.service.port
        self.target = self.service.target
        self._restart: threading.Timer | None = None
        self._restart_error: BaseException | None = None
        self._channel: grpc.Channel | None = None
        self.starts = 0

    # -- process

    def start(self) -> "TestbedServer":
        self.service.start()
        self.starts += 1
        self.wait_flags_loaded()
        return self

    def wait_flags_loaded(self, timeout: float = 10) -> None:
        """Health SERVING comes before the sources are imported: wait until
        every flag set of the testbed is there."""
        flags_pb2, _ = flags_api()
        want = set(SOURCES)

        def loaded() -> set[str]:
            answer = self.flag_service().ListFlagSets(flags_pb2.ListFlagSetsRequest(), timeout=2)
            return {s.name for s in answer.flag_sets if s.flags > 0}

        try:
            poll("testbed flag sets imported", loaded, lambda got: want <= got, timeout=timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- service log ---\n{self.service.log_tail()}") from None

    def kill(self) -> None:
        self.service.kill()

    def lose_connection(self, seconds: float) -> None:
        """Kills the server now and restarts it on the same port after
        `seconds`, without blocking the caller."""
        self.join_restart()
        self.kill()

        def restart() -> None:
            try:
                self.start()
            except BaseException as e:  # noqa: BLE001 - reported by join_restart
                self._restart_error = e

        self._restart = threading.Timer(seconds, restart)
        self._restart.daemon = True
        self._restart.start()

    def join_restart(self, timeout: float = 30) -> None:
        if self._restart is not None:
            self._restart.join(timeout)
            self._restart = None
        if self._restart_error is not None:
            error, self._restart_error = self._restart_error, None
            raise AssertionError(f"restarting the server failed: {error}")

    def stop(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
        try:
            self.join_restart()
        finally:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            if self.service.running:
                rc, _ = self.service.terminate(timeout=15)
                assert rc == 0, f"datalayer exited with {rc} after SIGTERM:\n{self.service.log_tail()}"

    # -- admin API

    def flag_service(self):
        _, flags_pb2_grpc = flags_api()
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
        return flags_pb2_grpc.FlagServiceStub(self._channel)

    def get_definition(self, key: str, flag_set: str = DEFAULT_FLAG_SET) -> dict:
        flags_pb2, _ = flags_api()
        answer = self.flag_service().Get(flags_pb2.GetRequest(flag_set=flag_set, key=key), timeout=5)
        return json.loads(answer.flag.definition)

    def toggle_default_variant(self, key: str, flag_set: str = DEFAULT_FLAG_SET) -> str:
        """Switches the flag's defaultVariant to its other variant (the flag
        must have exactly two) through FlagService.Put, compare-and-set on the
        version it read; returns the new default variant."""
        flags_pb2, _ = flags_api()
        stub = self.flag_service()
        current = stub.Get(flags_pb2.GetRequest(flag_set=flag_set, key=key), timeout=5).flag
        definition = json.loads(current.definition)
        variants = sorted(definition["variants"])
        assert len(variants) == 2, f"{key} must have two variants to toggle: {variants}"
        other = next(v for v in variants if v != definition.get("defaultVariant"))
        definition["defaultVariant"] = other
        answer = stub.Put(
            flags_pb2.PutRequest(
                flag_set=flag_set,
                key=key,
                definition=json.dumps(definition),
                expected_version=current.version,
            ),
            timeout=5,
        )
        assert answer.written, f"Put {flag_set}/{key} was not written (version moved on?)"
        return other

    def explain(self, key: str, context: dict, flag_set: str = DEFAULT_FLAG_SET):
        """FlagService.Explain: the matched rule and fractional buckets."""
        from google.protobuf.struct_pb2 import Struct

        flags_pb2, _ = flags_api()
        ctx = Struct()
        ctx.update(context)
        return self.flag_service().Explain(
            flags_pb2.ExplainRequest(flag_set=flag_set, key=key, context=ctx), timeout=5
        )
