"""Server reflection, as grpcurl uses it: list, describe, and calls built
from reflected descriptors only (this suite has no generated datalayer code).
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import descriptor
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from support import (
    HEALTH_SERVICE,
    RATELIMIT_SERVICE,
    REFLECTION_V1,
    REFLECTION_V1ALPHA,
    SERVING,
    DynamicClient,
    ReflectionDatabase,
    duration_seconds,
    health_status,
    raw_reflection,
)

SERVED = {RATELIMIT_SERVICE, HEALTH_SERVICE, REFLECTION_V1, REFLECTION_V1ALPHA}


def unique_key(prefix: str) -> str:
    return f"{prefix}:{uuid.uuid4().hex}"


# --------------------------------------------------------------------------
# list


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_list_services_names_every_served_service(channel, version):
    # grpcurl list: recent grpcurl asks v1, older (and many tools) v1alpha.
    # Each must name every service the server serves, both reflection
    # services included.
    services = set(ReflectionDatabase(channel, version).get_services())
    missing = SERVED - services
    assert not missing, f"reflection {version} list_services lacks {sorted(missing)}; got {sorted(services)}"


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_every_listed_service_is_described_and_served(channel, version):
    # What reflection advertises must be callable: a listed service whose
    # methods answer UNIMPLEMENTED would mislead grpcurl users.
    client = DynamicClient(channel, version)
    unimplemented, probed = [], []
    for name in client.db.get_services():
        service = client.pool.FindServiceByName(name)
        assert service.methods, f"{name} has no methods"
        method = service.methods[0]
        if method.client_streaming or method.server_streaming:
            continue  # probed by the other tests (reflection, health Watch)
        request_cls = client.message(method.input_type.full_name)
        call = channel.unary_unary(
            f"/{name}/{method.name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda b: b,
        )
        probed.append(name)
        try:
            call(request_cls(), timeout=5)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                unimplemented.append(f"{name}/{method.name}")
    assert {RATELIMIT_SERVICE, HEALTH_SERVICE} <= set(probed), probed
    assert not unimplemented, f"advertised by reflection but UNIMPLEMENTED: {unimplemented}"


def test_v1alpha_raw_list_services(channel):
    # The request grpcurl sends over v1alpha, on grpcio-reflection's own stub.
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    assert len(responses) == 1
    response = responses[0]
    assert response.WhichOneof("message_response") == "list_services_response"
    assert response.original_request.list_services == ""
    names = {s.name for s in response.list_services_response.service}
    assert {RATELIMIT_SERVICE, HEALTH_SERVICE} <= names, names


def test_unknown_reflection_version_is_unimplemented(channel):
    # The control for the v1 tests: the server routes reflection by path, so
    # an answer on the v1 path comes from its v1 service.
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as err:
        raw_reflection(channel, request, "v9")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_unknown_symbol_is_not_found(channel):
    # The reflection protocol answers with an ErrorResponse message on the
    # stream; tonic-reflection instead ends the stream with a NOT_FOUND status.
    # Either way the code must be NOT_FOUND (grpcurl accepts both).
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="datalayer.ratelimit.v1.NoSuchThing")
    try:
        response = raw_reflection(channel, request, "v1")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    else:
        assert response.WhichOneof("message_response") == "error_response", response
        assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


# --------------------------------------------------------------------------
# describe


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_describe_rate_limit_service(channel, version):
    pool = DynamicClient(channel, version).pool
    service = pool.FindServiceByName(RATELIMIT_SERVICE)
    assert service.file.name == "datalayer/ratelimit/v1/ratelimit.proto"
    methods = {
        m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)
        for m in service.methods
    }
    assert methods == {
        "Check": ("datalayer.ratelimit.v1.CheckRequest", "datalayer.ratelimit.v1.CheckResponse", False, False),
        "CheckBatch": ("datalayer.ratelimit.v1.CheckBatchRequest", "datalayer.ratelimit.v1.CheckBatchResponse", False, False),
        "Report": ("datalayer.ratelimit.v1.ReportRequest", "datalayer.ratelimit.v1.ReportResponse", False, False),
        "Settle": ("datalayer.ratelimit.v1.SettleRequest", "datalayer.ratelimit.v1.SettleResponse", False, False),
        "Reset": ("datalayer.ratelimit.v1.ResetRequest", "datalayer.ratelimit.v1.ResetResponse", False, False),
    }


def test_describe_check_request_and_limit(channel):
    # grpcurl describe datalayer.ratelimit.v1.CheckRequest / datalayer.ratelimit.v1.Limit
    pool = DynamicClient(channel).pool
    FD = descriptor.FieldDescriptor
    req = pool.FindMessageTypeByName("datalayer.ratelimit.v1.CheckRequest")
    fields = {f.name: (f.number, f.type) for f in req.fields}
    assert fields == {
        "key": (1, FD.TYPE_STRING),
        "limit": (2, FD.TYPE_MESSAGE),
        "policy": (3, FD.TYPE_STRING),
        "cost": (4, FD.TYPE_UINT64),
        "reserve": (5, FD.TYPE_BOOL),
    }
    assert req.fields_by_name["limit"].message_type.full_name == "datalayer.ratelimit.v1.Limit"
    assert [f.name for f in req.oneofs_by_name["limit_source"].fields] == ["limit", "policy"]
    assert req.fields_by_name["cost"].has_presence  # `optional uint64 cost`

    limit = pool.FindMessageTypeByName("datalayer.ratelimit.v1.Limit")
    assert [f.name for f in limit.oneofs_by_name["algorithm"].fields] == [
        "gcra",
        "token_bucket",
        "fixed_window",
        "sliding_window",
    ]
    # Imports are served too: Duration comes from the server, not from us.
    period = pool.FindMessageTypeByName("datalayer.ratelimit.v1.Gcra").fields_by_name["period"]
    assert period.message_type.full_name == "google.protobuf.Duration"
    assert period.message_type.file.name == "google/protobuf/duration.proto"

    reasons = pool.FindEnumTypeByName("datalayer.ratelimit.v1.Reason").values_by_name
    assert set(reasons) == {
        "REASON_UNSPECIFIED",
        "REASON_WITHIN_LIMIT",
        "REASON_OVER_LIMIT",
        "REASON_COST_EXCEEDS_LIMIT",
        "REASON_FAIL_OPEN",
        "REASON_BATCH_REJECTED",
        "REASON_SHADOW_OVER_LIMIT",
    }


# --------------------------------------------------------------------------
# dynamic calls


def test_dynamic_check_by_policy_admits_five_then_rejects(channel):
    client = DynamicClient(channel)
    check = client.unary("datalayer.ratelimit.v1.RateLimitService/Check")
    within = client.enum_value("datalayer.ratelimit.v1.Reason", "REASON_WITHIN_LIMIT")
    over = client.enum_value("datalayer.ratelimit.v1.Reason", "REASON_OVER_LIMIT")
    key = unique_key("user")

    for expected_remaining in [4, 3, 2, 1, 0]:
        r = check(key=key, policy="auth")
        assert (r.allowed, r.limit, r.remaining, r.reason) == (True, 5, expected_remaining, within)
        assert not r.HasField("retry_after")
        # sliding window of 1m: the hits count fully until the current window
        # ends, then fade out over the next one, so back in full within 2m.
        assert 0 < duration_seconds(r.reset_after) <= 120

    r = check(key=key, policy="auth")
    assert (r.allowed, r.limit, r.remaining, r.reason) == (False, 5, 0, over)
    assert r.HasField("retry_after")
    assert 0 < duration_seconds(r.retry_after) <= 120

    # The rejected call consumed nothing, and other keys are untouched.
    r = check(key=key, policy="auth", cost=0)
    assert (r.allowed, r.remaining) == (True, 0)
    r = check(key=unique_key("user"), policy="auth")
    assert (r.allowed, r.remaining) == (True, 4)


def test_dynamic_check_inline_gcra_is_exact(channel):
    client = DynamicClient(channel)
    check = client.unary("datalayer.ratelimit.v1.RateLimitService/Check")
    CheckRequest = client.message("datalayer.ratelimit.v1.CheckRequest")
    Duration = client.message("google.protobuf.Duration")
    over = client.enum_value("datalayer.ratelimit.v1.Reason", "REASON_OVER_LIMIT")
    key = unique_key("bot")

    def request(cost=None):
        req = CheckRequest(key=key)
        req.limit.gcra.limit = 3
        req.limit.gcra.period.CopyFrom(Duration(seconds=60))
        if cost is not None:
            req.cost = cost
        return req

    # 3 per minute: one emission interval is 20s.
    r = check(request())
    assert (r.allowed, r.limit, r.remaining) == (True, 3, 2)
    assert duration_seconds(r.reset_after) == 20.0  # first call: exactly one interval

    r = check(request(cost=2))
    assert (r.allowed, r.remaining) == (True, 0)
    assert 59.0 < duration_seconds(r.reset_after) <= 60.0

    r = check(request())
    assert (r.allowed, r.remaining, r.reason) == (False, 0, over)
    assert r.HasField("retry_after")
    # The next unit fits when the first one's interval has passed.
    assert 19.0 < duration_seconds(r.retry_after) <= 20.0

    # A cost that can never fit: rejected without a retry time.
    r = check(request(cost=4))
    assert not r.allowed
    assert r.reason == client.enum_value("datalayer.ratelimit.v1.Reason", "REASON_COST_EXCEEDS_LIMIT")
    assert not r.HasField("retry_after")

    # Reset forgets the key: the whole budget is back.
    reset = client.unary("datalayer.ratelimit.v1.RateLimitService/Reset")
    reset_req = reset.request_class(key=key)
    reset_req.limit.CopyFrom(request().limit)
    reset(reset_req)
    r = check(request())
    assert (r.allowed, r.remaining) == (True, 2)


def test_dynamic_check_batch_answers_in_order(channel):
    client = DynamicClient(channel)
    batch = client.unary("datalayer.ratelimit.v1.RateLimitService/CheckBatch")
    a, b = unique_key("a"), unique_key("b")
    req = batch.request_class()
    for key, cost in [(a, 5), (b, 1), (a, 1)]:
        item = req.checks.add(key=key, policy="auth")
        item.cost = cost
    r = batch(req)
    assert [(x.allowed, x.remaining) for x in r.results] == [(True, 0), (True, 4), (False, 0)]


def test_empty_key_is_invalid_argument_with_bad_request(channel):
    client = DynamicClient(channel)
    check = client.unary("datalayer.ratelimit.v1.RateLimitService/Check")
    with pytest.raises(grpc.RpcError) as err:
        check(key="", policy="auth")
    call = err.value
    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(k == "grpc-status-details-bin" for k, _ in call.trailing_metadata())

    status = rpc_status.from_call(call)
    assert status is not None
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad_requests = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            bad_requests.append(br)
    assert len(bad_requests) == 1, status.details
    violations = [(v.field, v.description) for v in bad_requests[0].field_violations]
    assert [field for field, _ in violations] == ["key"], violations
    assert violations[0][1], "the violation says why"


def test_unknown_policy_is_invalid_argument_naming_policy(channel):
    check = DynamicClient(channel).unary("datalayer.ratelimit.v1.RateLimitService/Check")
    with pytest.raises(grpc.RpcError) as err:
        check(key=unique_key("user"), policy="no-such-policy")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)
    br = error_details_pb2.BadRequest()
    assert status.details and status.details[0].Unpack(br)
    assert [v.field for v in br.field_violations] == ["policy"]


# --------------------------------------------------------------------------
# the memory store


def test_memory_store_smoke(memory_channel):
    # No redis.url: the in-process store serves, health is SERVING, and the
    # same reflection-built calls work.
    assert health_status(memory_channel, "") == SERVING
    assert health_status(memory_channel, RATELIMIT_SERVICE) == SERVING
    client = DynamicClient(memory_channel)
    assert RATELIMIT_SERVICE in client.db.get_services()
    check = client.unary("datalayer.ratelimit.v1.RateLimitService/Check")
    key = unique_key("mem")
    results = [check(key=key, policy="auth") for _ in range(6)]
    assert [(r.allowed, r.remaining) for r in results] == [
        (True, 4),
        (True, 3),
        (True, 2),
        (True, 1),
        (True, 0),
        (False, 0),
    ]
    assert results[-1].HasField("retry_after")
