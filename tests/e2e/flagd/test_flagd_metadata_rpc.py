"""metadata.feature's "Returns metadata", checked on the wire.

openfeature-provider-flagd's RPC resolver drops the metadata of flagd's
Resolve* responses, so the scenario is skipped there (see conftest.py). Here
the same expectation is checked against the server directly, over both
flagd.evaluation.v1 and v2, with the stubs the provider package ships; plus
the flag-set metadata (`flagSetId`) of the selector source, which flagd adds
to each flag's metadata.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from openfeature.schemas.protobuf.flagd.evaluation.v1 import evaluation_pb2 as v1, evaluation_pb2_grpc as v1_grpc
from openfeature.schemas.protobuf.flagd.evaluation.v2 import evaluation_pb2 as v2, evaluation_pb2_grpc as v2_grpc

VERSIONS = {"v1": (v1, v1_grpc), "v2": (v2, v2_grpc)}

# metadata.feature, "Returns metadata" (flags/metadata-flags.json). Struct
# numbers are doubles on the wire.
METADATA_FLAG = {"string": "a", "integer": 1.0, "float": 1.2, "boolean": True}


@pytest.fixture
def channel(testbed_server):
    ch = grpc.insecure_channel(testbed_server.target)
    yield ch
    ch.close()


@pytest.mark.parametrize("version", list(VERSIONS))
def test_flag_metadata(channel, version):
    pb, pb_grpc = VERSIONS[version]
    answer = pb_grpc.ServiceStub(channel).ResolveBoolean(pb.ResolveBooleanRequest(flag_key="metadata-flag"), timeout=5)
    assert MessageToDict(answer.metadata) == METADATA_FLAG


@pytest.mark.parametrize("version", list(VERSIONS))
def test_no_metadata(channel, version):
    pb, pb_grpc = VERSIONS[version]
    answer = pb_grpc.ServiceStub(channel).ResolveBoolean(pb.ResolveBooleanRequest(flag_key="boolean-flag"), timeout=5)
    assert MessageToDict(answer.metadata) == {}


@pytest.mark.parametrize("version", list(VERSIONS))
def test_flag_set_metadata_with_selector(channel, version):
    pb, pb_grpc = VERSIONS[version]
    answer = pb_grpc.ServiceStub(channel).ResolveString(
        pb.ResolveStringRequest(flag_key="selector-flag"),
        metadata=(("flagd-selector", "rawflags/selector-flags.json"),),
        timeout=5,
    )
    assert answer.value == "foo"
    assert MessageToDict(answer.metadata) == {"flagSetId": "selector-set"}
