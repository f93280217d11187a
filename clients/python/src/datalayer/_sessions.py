"""Session checks, on ``SessionService``.

Reached as ``client.sessions.validate(token)`` (``client.sessions`` is a
:class:`datalayer.SessionClient`, the generated wrapper plus
:class:`SessionHelpers`)::

    session = client.sessions.validate(request.cookies.get("sid"))
    if session is None:
        return redirect("/login")
    user_id = session.user_id

The name is free on ``SessionService`` (the generated ``validate`` is
``FlagService.Validate``, on ``client.flags``: a different class).
"""

from __future__ import annotations

from typing import Protocol

from datalayer._invoke import Metadata
from datalayer.errors import InvalidArgument, NotFound
from datalayer.session.v1 import session_pb2

__all__ = ["AsyncSessionHelpers", "SessionHelpers"]


class _SyncSessionRPCs(Protocol):
    def get(
        self, request: session_pb2.GetRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> session_pb2.GetResponse: ...


class _AsyncSessionRPCs(Protocol):
    async def get(
        self, request: session_pb2.GetRequest, *, timeout: float | None = None, metadata: Metadata = ()
    ) -> session_pb2.GetResponse: ...


def _request(token: str | None, touch: bool) -> session_pb2.GetRequest | None:
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError(f"a session token must be a string (or None), got {type(token).__name__}")
    if not token:
        return None
    return session_pb2.GetRequest(token=token, touch=touch)


def _malformed(err: InvalidArgument) -> bool:
    """The service refused the token itself (not a session token), and
    nothing else of the request."""
    violations = err.field_violations
    return bool(violations) and all(v.field == "token" for v in violations)


class SessionHelpers:
    """Helpers of ``Client.sessions`` (mixed into :class:`datalayer.SessionClient`)."""

    def validate(
        self: _SyncSessionRPCs, token: str | None, *, touch: bool = False, metadata: Metadata = ()
    ) -> session_pb2.Session | None:
        """The session behind ``token``, or ``None`` if there is none: an
        unknown, expired or revoked token (``NotFound``) and a malformed one
        (``InvalidArgument`` on ``token``) alike, and an empty string or
        ``None`` without a call. ``touch=True`` also slides the idle expiry.
        Other errors (``Unavailable``, ``Unauthenticated``, ...) are raised."""
        request = _request(token, touch)
        if request is None:
            return None
        try:
            return self.get(request, metadata=metadata).session
        except NotFound:
            return None
        except InvalidArgument as e:
            if _malformed(e):
                return None
            raise


class AsyncSessionHelpers:
    """Helpers of ``AsyncClient.sessions``: as :class:`SessionHelpers`."""

    async def validate(
        self: _AsyncSessionRPCs, token: str | None, *, touch: bool = False, metadata: Metadata = ()
    ) -> session_pb2.Session | None:
        """As :meth:`SessionHelpers.validate`."""
        request = _request(token, touch)
        if request is None:
            return None
        try:
            return (await self.get(request, metadata=metadata)).session
        except NotFound:
            return None
        except InvalidArgument as e:
            if _malformed(e):
                return None
            raise
