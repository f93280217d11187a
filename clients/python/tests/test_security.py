"""API keys, quotas, TLS and mTLS through the Python client, end to end
against the real binary started with a configuration file (on the memory
store): keys made by `datalayer keys new`, certificates by `openssl`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from datalayer import (
    AsyncClient,
    Client,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from datalayer._invoke import TLS_HINT
from datalayer.audit.v1 import audit_pb2
from datalayer.cache.v1 import cache_pb2 as cache
from datalayer.ratelimit.v1 import ratelimit_pb2 as rl

from .conftest import ApiKey, Certs, Stack, health_status, make_certs, new_key, run_service, unique, wait_for

CACHE_SET = "datalayer.cache.v1.CacheService/Set"
MINUTE = Duration(seconds=60)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def put(client: Client, key: str, value: bytes) -> None:
    assert client.cache.set(cache.SetRequest(key=key, value=value, ttl=MINUTE)).stored


def get(client: Client, key: str) -> bytes | None:
    answer = client.cache.get(cache.GetRequest(key=key))
    return answer.entry.value if answer.found else None


def audited(client: Client, target: str) -> list[audit_pb2.AuditEvent]:
    return [e for e in client.audit.list(audit_pb2.ListRequest()).events if e.target == target]


def reset(client: Client, key: str) -> None:
    limit = rl.Limit(gcra=rl.Gcra(limit=1, period=MINUTE))
    client.ratelimit.reset(rl.ResetRequest(key=key, limit=limit))


class Attempts(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the calls that reach the channel (each retry is one)."""

    def __init__(self) -> None:
        self.count = 0

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self.count += 1
        return continuation(details, request)


# ---- API keys -------------------------------------------------------------


class Keys:
    def __init__(self) -> None:
        self.a = new_key("a-all", "ta")  # every method, tenant ta
        self.b = new_key("b-all", "tb")  # every method, tenant tb
        self.reader = new_key("a-reader", "ta")  # `read` only
        self.cache_only = new_key("a-cache", "ta")  # CacheService/* only
        self.expired = new_key("a-old", "ta")
        self.quota = new_key("q-all", "tq")  # tenant tq: 1 call per second


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def auth_stack(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    entries = [
        keys.a.entry(),
        keys.b.entry(),
        keys.reader.entry(allow=("read",)),
        keys.cache_only.entry(allow=("datalayer.cache.v1.CacheService/*",)),
        keys.expired.entry(expires="2020-01-01T00:00:00Z"),
        keys.quota.entry(),
    ]
    config = write_config(
        tmp_path_factory.mktemp("auth") / "datalayer.yaml",
        "auth:\n"
        "  required: true\n"
        "  max_failures: 1000\n"  # the tests fail on purpose, all from 127.0.0.1
        "  keys:\n" + "".join(f"    - {e}\n" for e in entries) + "  quotas:\n"
        "    tq: { calls_per_second: 1, burst: 1 }\n",
    )
    yield from run_service(None, config=config, reflect=False)


@pytest.fixture
def as_key(auth_stack: Stack) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(key: ApiKey | str | None, **kwargs: Any) -> Client:
        token = key.key if isinstance(key, ApiKey) else key
        c = Client(auth_stack.addr, token=token, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_a_key_from_keys_new_acts_in_its_own_tenant(as_key: Callable[..., Client], keys: Keys) -> None:
    a, b = as_key(keys.a), as_key(keys.b)
    name = unique("py:shared")
    put(a, name, b"a's")
    assert get(a, name) == b"a's"
    assert get(b, name) is None, "tenant tb sees nothing of tenant ta's entry of the same name"
    put(b, name, b"b's")
    assert (get(a, name), get(b, name)) == (b"a's", b"b's")
    assert get(as_key(keys.reader), name) == b"a's", "another key of tenant ta sees ta's data"


def test_a_call_without_a_key_is_unauthenticated(as_key: Callable[..., Client], auth_stack: Stack) -> None:
    with pytest.raises(Unauthenticated) as info:
        put(as_key(None), unique("py:nokey"), b"v")
    assert CACHE_SET in info.value.message and "Bearer" in info.value.message
    with auth_stack.channel() as ch:
        assert health_status(ch) == 1, "health stays open without a key"


def test_unknown_and_expired_keys_are_unauthenticated(as_key: Callable[..., Client], keys: Keys) -> None:
    attempts = Attempts()
    with pytest.raises(Unauthenticated, match="unknown API key"):
        get(as_key("dlk_" + "0" * 64, interceptors=[attempts]), "k")
    assert attempts.count == 1, "UNAUTHENTICATED is not retried"
    with pytest.raises(Unauthenticated, match="`a-old` has expired"):
        get(as_key(keys.expired), "k")


def test_a_key_without_the_permission_is_denied_naming_the_method(as_key: Callable[..., Client], keys: Keys) -> None:
    reader = as_key(keys.reader)
    assert get(reader, unique("py:ro")) is None, "a read key reads"
    with pytest.raises(PermissionDenied) as info:
        put(reader, unique("py:ro"), b"v")
    assert info.value.message == f"API key `a-reader` may not call {CACHE_SET}"
    cache_only = as_key(keys.cache_only)
    put(cache_only, unique("py:cache-only"), b"v")
    with pytest.raises(PermissionDenied, match="datalayer.ratelimit.v1.RateLimitService/Reset"):
        reset(cache_only, unique("py:cache-only"))


def test_the_audit_log_names_the_key_and_stays_in_its_tenant(as_key: Callable[..., Client], keys: Keys) -> None:
    a, b = as_key(keys.a), as_key(keys.b)
    target = unique("py:audited")
    reset(a, target)
    [event] = wait_for(lambda: audited(a, target))
    assert (event.principal, event.outcome) == ("a-all", "OK")
    assert event.method == "datalayer.ratelimit.v1.RateLimitService/Reset"
    assert audited(b, target) == [], "tenant tb does not read tenant ta's audit log"
    assert audited(as_key(keys.reader), target) == [event], "AuditService/List is a read"


def test_over_quota_is_resource_exhausted_with_retry_after_and_not_retried(
    as_key: Callable[..., Client], keys: Keys
) -> None:
    attempts = Attempts()
    client = as_key(keys.quota, interceptors=[attempts])
    # The quota is 1 call per second with a burst of 1: back-to-back calls
    # get one through, then RESOURCE_EXHAUSTED.
    started = time.monotonic()
    with pytest.raises(ResourceExhausted) as info:
        for _ in range(3):
            get(client, "k")
    elapsed = time.monotonic() - started
    err = info.value
    assert "tq" in err.message and "quota" in err.message
    assert err.retry_after is not None and 0 < err.retry_after <= 1.0
    assert attempts.count == 2, f"RESOURCE_EXHAUSTED was retried: {attempts.count} attempts"
    assert elapsed < 0.9, "the client did not wait out RetryInfo on its own"
    time.sleep(err.retry_after + 0.05)
    assert get(client, "k") is None, "after retry_after the tenant's calls go through again"


async def test_the_async_client_sends_its_key(auth_stack: Stack, keys: Keys) -> None:
    name = unique("py:async-key")
    async with AsyncClient(auth_stack.addr, token=keys.a.key) as a:
        await a.cache.set(cache.SetRequest(key=name, value=b"v", ttl=MINUTE))
        assert (await a.cache.get(cache.GetRequest(key=name))).found
    async with AsyncClient(auth_stack.addr, token=keys.b.key) as b:
        assert not (await b.cache.get(cache.GetRequest(key=name))).found
    async with AsyncClient(auth_stack.addr) as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.cache.get(cache.GetRequest(key=name))


# ---- TLS and mTLS -----------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"), clients=("svc-a", "svc-ro", "stranger"))


@pytest.fixture(scope="module")
def tls_key() -> ApiKey:
    return new_key("k-all", "tk")


def tls_config(certs: Certs, require_client_cert: bool) -> str:
    return (
        "server:\n"
        "  tls:\n"
        f"    cert_file: {certs.path('server.crt')}\n"
        f"    key_file: {certs.path('server.key')}\n"
        f"    client_ca_file: {certs.path('ca.crt')}\n"
        f"    require_client_cert: {str(require_client_cert).lower()}\n"
    )


@pytest.fixture(scope="module")
def tls_stack(certs: Certs, tls_key: ApiKey) -> Iterator[Stack]:
    """TLS with optional client certificates; keys required; the client
    certificates `svc-a` (every method) and `svc-ro` (reads) act as tenant
    tc; `stranger` is signed by the CA but not in auth.clients."""
    config = write_config(
        certs.path("tls.yaml"),
        tls_config(certs, require_client_cert=False) + "auth:\n"
        "  required: true\n"
        "  max_failures: 1000\n"
        f"  keys:\n    - {tls_key.entry()}\n"
        "  clients:\n"
        '    - { common_name: svc-a, tenant: tc, allow: ["*"] }\n'
        '    - { common_name: svc-ro, tenant: tc, allow: ["read"] }\n',
    )
    creds = grpc.ssl_channel_credentials(root_certificates=certs.read("ca.crt"))
    yield from run_service(None, config=config, credentials=creds, reflect=False)


@pytest.fixture(scope="module")
def mtls_stack(certs: Certs) -> Iterator[Stack]:
    """A client certificate is required to connect at all (no keys)."""
    config = write_config(certs.path("mtls.yaml"), tls_config(certs, require_client_cert=True))
    creds = grpc.ssl_channel_credentials(
        root_certificates=certs.read("ca.crt"),
        private_key=certs.read("svc-a.key"),
        certificate_chain=certs.read("svc-a.crt"),
    )
    yield from run_service(None, config=config, credentials=creds, reflect=False)


def https(stack: Stack) -> str:
    return f"https://{stack.addr}"


def with_cert(certs: Certs, cn: str) -> dict[str, bytes]:
    return {
        "root_certificates": certs.read("ca.crt"),
        "client_cert": certs.read(f"{cn}.crt"),
        "client_key": certs.read(f"{cn}.key"),
    }


def test_tls_with_a_given_ca_and_a_key(tls_stack: Stack, certs: Certs, tls_key: ApiKey) -> None:
    name = unique("py:tls")
    with Client(https(tls_stack), root_certificates=certs.read("ca.crt"), token=tls_key.key) as client:
        put(client, name, b"over TLS")
        assert get(client, name) == b"over TLS"
    # A bare host:port with root_certificates is TLS too.
    with Client(tls_stack.addr, root_certificates=certs.read("ca.crt"), token=tls_key.key) as client:
        assert get(client, name) == b"over TLS"


def test_plaintext_to_a_tls_server_fails_saying_so(tls_stack: Stack, tls_key: ApiKey) -> None:
    started = time.monotonic()
    with Client(tls_stack.addr, token=tls_key.key, timeout=3) as client, pytest.raises(Unavailable) as info:
        get(client, "k")
    assert TLS_HINT in info.value.message and "https://" in str(info.value)
    assert time.monotonic() - started < 3, "a bounded number of retries, within the deadline"


def test_system_roots_do_not_trust_a_private_ca(tls_stack: Stack, tls_key: ApiKey) -> None:
    with Client(https(tls_stack), token=tls_key.key, retries=0) as client, pytest.raises(Unavailable) as info:
        get(client, "k")
    assert "handshake" in info.value.message.lower() or "certificate" in info.value.message.lower()
    assert TLS_HINT not in info.value.message


def test_mtls_common_name_acts_as_its_tenant_without_a_key(
    tls_stack: Stack, certs: Certs, tls_key: ApiKey
) -> None:
    name = unique("py:mtls")
    with Client(https(tls_stack), **with_cert(certs, "svc-a")) as svc:
        put(svc, name, b"svc-a's")
        reset(svc, name)
        [event] = wait_for(lambda: audited(svc, name))
        assert event.principal == "cert:svc-a"
    with Client(https(tls_stack), **with_cert(certs, "svc-ro")) as reader:
        assert get(reader, name) == b"svc-a's", "the same tenant, tc"
        with pytest.raises(PermissionDenied, match=CACHE_SET):
            put(reader, name, b"v")
    with Client(https(tls_stack), root_certificates=certs.read("ca.crt"), token=tls_key.key) as other:
        assert get(other, name) is None, "the key's tenant tk sees nothing of tc"
    # A key sent with a certificate wins: the call acts as the key's tenant.
    with Client(https(tls_stack), token=tls_key.key, **with_cert(certs, "svc-a")) as both:
        assert get(both, name) is None


def test_without_a_mapped_certificate_or_key_tls_calls_are_unauthenticated(tls_stack: Stack, certs: Certs) -> None:
    with Client(https(tls_stack), root_certificates=certs.read("ca.crt")) as client:
        with pytest.raises(Unauthenticated, match="needs an API key"):
            get(client, "k")
    with Client(https(tls_stack), **with_cert(certs, "stranger")) as client:
        with pytest.raises(Unauthenticated):
            get(client, "k")


async def test_async_client_with_a_client_certificate(tls_stack: Stack, certs: Certs) -> None:
    name = unique("py:mtls-async")
    async with AsyncClient(https(tls_stack), **with_cert(certs, "svc-a")) as client:
        await client.cache.set(cache.SetRequest(key=name, value=b"v", ttl=MINUTE))
        assert (await client.cache.get(cache.GetRequest(key=name))).found


def test_a_required_client_certificate(mtls_stack: Stack, certs: Certs) -> None:
    with Client(https(mtls_stack), **with_cert(certs, "svc-a")) as client:
        put(client, unique("py:mtls-required"), b"v")
    with Client(https(mtls_stack), root_certificates=certs.read("ca.crt"), retries=0) as client:
        with pytest.raises(Unavailable):
            get(client, "k")


def test_tls_options_are_checked(certs: Certs) -> None:
    with pytest.raises(ValueError, match="client_cert and client_key go together"):
        Client("127.0.0.1:1", client_cert=certs.read("svc-a.crt"))
    with pytest.raises(ValueError, match="use https://"):
        Client("http://127.0.0.1:1", root_certificates=certs.read("ca.crt"))
    with pytest.raises(ValueError, match="host:port"):
        Client("https://127.0.0.1:1/path")
    with Client("https://127.0.0.1:1") as c:
        assert c.target == "127.0.0.1:1"
