"""SessionService through the Python client, against the real binary."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration

from datalayer import AsyncClient, Client, InvalidArgument, NotFound
from datalayer.session.v1 import session_pb2 as s

from .conftest import Stack, require, unique

SERVICE = "datalayer.session.v1.SessionService"


@pytest.fixture(autouse=True)
def _served(stack: Stack) -> None:
    require(stack, SERVICE)


def test_session_lifecycle(client: Client) -> None:
    user = unique("py:user")
    created = client.sessions.create(
        s.CreateRequest(
            user_id=user,
            data={"theme": "dark"},
            idle_ttl=Duration(seconds=600),
            client_ip="127.0.0.1",
            user_agent="pytest",
        )
    )
    token = created.token
    assert token and created.session.session_id and created.session.user_id == user
    assert dict(created.session.data) == {"theme": "dark"}

    got = client.sessions.get(s.GetRequest(token=token, touch=True)).session
    assert got.session_id == created.session.session_id and got.user_agent == "pytest"

    updated = client.sessions.update(s.UpdateRequest(token=token, data={"lang": "en"}))
    assert updated.updated and dict(updated.session.data) == {"theme": "dark", "lang": "en"}
    stale = client.sessions.update(
        s.UpdateRequest(token=token, data={"x": "y"}, expected_version=updated.session.version + 100)
    )
    assert not stale.updated and "x" not in stale.session.data

    touched = client.sessions.touch(s.TouchRequest(token=token))
    assert touched.HasField("expires_at") and touched.expires_at.seconds > 0

    rotated = client.sessions.rotate(s.RotateRequest(token=token))
    assert rotated.token and rotated.token != token
    assert rotated.session.session_id == created.session.session_id
    with pytest.raises(NotFound):
        client.sessions.get(s.GetRequest(token=token))

    assert client.sessions.revoke(s.RevokeRequest(token=rotated.token)).revoked
    assert not client.sessions.revoke(s.RevokeRequest(token=rotated.token)).revoked


def test_user_sessions_list_count_revoke(client: Client) -> None:
    user = unique("py:user")
    tokens = [client.sessions.create(s.CreateRequest(user_id=user)).token for _ in range(3)]
    listed = client.sessions.list_user_sessions(s.ListUserSessionsRequest(user_id=user)).sessions
    assert len(listed) == 3 and all(x.user_id == user for x in listed)
    assert client.sessions.count_user_sessions(s.CountUserSessionsRequest(user_id=user)).count == 3
    revoked = client.sessions.revoke_user_sessions(s.RevokeUserSessionsRequest(user_id=user, except_token=tokens[0]))
    assert revoked.revoked == 2
    assert client.sessions.count_user_sessions(s.CountUserSessionsRequest(user_id=user)).count == 1
    assert client.sessions.get(s.GetRequest(token=tokens[0])).session.user_id == user


def test_one_time_token_is_consumed_once(client: Client) -> None:
    subject = unique("py:subject")
    issued = client.sessions.issue_one_time_token(
        s.IssueOneTimeTokenRequest(purpose="email-verify", subject=subject, ttl=Duration(seconds=600))
    )
    assert issued.token and issued.HasField("expires_at")
    consumed = client.sessions.consume_one_time_token(s.ConsumeOneTimeTokenRequest(purpose="email-verify", token=issued.token))
    assert consumed.subject == subject
    with pytest.raises(NotFound):
        client.sessions.consume_one_time_token(s.ConsumeOneTimeTokenRequest(purpose="email-verify", token=issued.token))


def test_empty_user_id_is_a_field_violation(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.sessions.create(s.CreateRequest(user_id=""))
    assert "user_id" in [v.field for v in info.value.field_violations]


async def test_async_sessions(async_client: AsyncClient) -> None:
    user = unique("py:auser")
    created = await async_client.sessions.create(s.CreateRequest(user_id=user))
    got = await async_client.sessions.get(s.GetRequest(token=created.token))
    assert got.session.user_id == user
    assert (await async_client.sessions.revoke(s.RevokeRequest(token=created.token))).revoked
    with pytest.raises(NotFound):
        await async_client.sessions.get(s.GetRequest(token=created.token))
    with pytest.raises(InvalidArgument) as info:  # not even the shape of a token
        await async_client.sessions.get(s.GetRequest(token="not-a-token"))
    assert [v.field for v in info.value.field_violations] == ["token"]
