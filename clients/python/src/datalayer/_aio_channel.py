"""The channel of an :class:`datalayer.AsyncClient`, made at its first use.

A ``grpc.aio`` channel belongs to the event loop that was running when it
was made (or, with none running, to whatever ``asyncio.get_event_loop()``
answered then, which is not the loop ``asyncio.run`` starts later): used
from another loop, its calls fail with "attached to a different loop".
:class:`LazyChannel` makes the real channel at the first call, inside the
running loop, so an ``AsyncClient`` may be created anywhere (at import
time, in a constructor, before ``asyncio.run``). Made inside a running loop,
it makes the channel at once, as ``grpc.aio`` would.

One client serves one event loop at a time. When the loop it was bound to
has closed (a second ``asyncio.run``), the next call makes a new channel in
the new loop; using it from another loop while the first still runs is a
``RuntimeError`` that says so.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Callable, Generic, TypeVar

import grpc
import grpc.aio

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class LazyChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` whose real channel ``make()`` makes in the
    running event loop, at the first call (or at once, if a loop runs)."""

    def __init__(self, make: Callable[[], grpc.aio.Channel]) -> None:
        self._make = make
        self._channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # made at the first call, inside the loop that makes it
        else:
            self.real()

    def real(self) -> grpc.aio.Channel:
        """The channel of the running event loop, made if needed."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("an AsyncClient's calls are made inside a running event loop (awaited in a coroutine)") from None
        if self._channel is not None and (self._loop is loop or self._closed):
            return self._channel  # a closed channel raises grpc's UsageError
        if self._closed:
            raise grpc.aio.UsageError("Channel is closed.")
        if self._channel is not None and self._loop is not None and not self._loop.is_closed():
            raise RuntimeError(
                "this AsyncClient is bound to another event loop, which still runs: "
                "make one AsyncClient per event loop"
            )
        self._channel, self._loop = self._make(), loop
        return self._channel

    # ---- the four kinds of call: made on the real channel when called

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[_Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], _Resp] | None = None,
        **kwargs: Any,
    ) -> grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp]:
        return _UnaryUnary(_Lazy(self, "unary_unary", method, request_serializer, response_deserializer, kwargs))

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[_Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], _Resp] | None = None,
        **kwargs: Any,
    ) -> grpc.aio.UnaryStreamMultiCallable[_Req, _Resp]:
        return _UnaryStream(_Lazy(self, "unary_stream", method, request_serializer, response_deserializer, kwargs))

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[_Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], _Resp] | None = None,
        **kwargs: Any,
    ) -> grpc.aio.StreamUnaryMultiCallable[_Req, _Resp]:
        return _StreamUnary(_Lazy(self, "stream_unary", method, request_serializer, response_deserializer, kwargs))

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[_Req], bytes] | None = None,
        response_deserializer: Callable[[bytes], _Resp] | None = None,
        **kwargs: Any,
    ) -> grpc.aio.StreamStreamMultiCallable[_Req, _Resp]:
        return _StreamStream(_Lazy(self, "stream_stream", method, request_serializer, response_deserializer, kwargs))

    # ---- the rest of grpc.aio.Channel

    async def close(self, grace: float | None = None) -> None:
        self._closed = True
        if self._channel is not None:
            await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        if self._channel is None:
            if not try_to_connect:
                return grpc.ChannelConnectivity.IDLE
            return self.real().get_state(try_to_connect)
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self.real().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.real().channel_ready()

    async def __aenter__(self) -> LazyChannel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        await self.close(None)
        return None


class _Lazy(Generic[_Req, _Resp]):
    """One method of a :class:`LazyChannel`: its multicallable on the real
    channel, made again when the real channel changes."""

    def __init__(
        self,
        channel: LazyChannel,
        kind: str,
        method: str,
        request_serializer: Callable[[_Req], bytes] | None,
        response_deserializer: Callable[[bytes], _Resp] | None,
        kwargs: dict[str, Any],
    ) -> None:
        self._channel = channel
        self._kind = kind
        self._args = (method, request_serializer, response_deserializer)
        self._kwargs = kwargs
        self._made: tuple[grpc.aio.Channel, Any] | None = None

    def callable(self) -> Any:
        real = self._channel.real()
        if self._made is None or self._made[0] is not real:
            self._made = (real, getattr(real, self._kind)(*self._args, **self._kwargs))
        return self._made[1]


class _UnaryUnary(grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp]):
    def __init__(self, lazy: _Lazy[_Req, _Resp]) -> None:
        self._lazy = lazy

    def __call__(self, request: _Req, **kwargs: Any) -> grpc.aio.UnaryUnaryCall[_Req, _Resp]:
        call: grpc.aio.UnaryUnaryCall[_Req, _Resp] = self._lazy.callable()(request, **kwargs)
        return call


class _UnaryStream(grpc.aio.UnaryStreamMultiCallable[_Req, _Resp]):
    def __init__(self, lazy: _Lazy[_Req, _Resp]) -> None:
        self._lazy = lazy

    def __call__(self, request: _Req, **kwargs: Any) -> grpc.aio.UnaryStreamCall[_Req, _Resp]:
        call: grpc.aio.UnaryStreamCall[_Req, _Resp] = self._lazy.callable()(request, **kwargs)
        return call


class _StreamUnary(grpc.aio.StreamUnaryMultiCallable[_Req, _Resp]):
    def __init__(self, lazy: _Lazy[_Req, _Resp]) -> None:
        self._lazy = lazy

    def __call__(self, *args: Any, **kwargs: Any) -> grpc.aio.StreamUnaryCall[_Req, _Resp]:
        call: grpc.aio.StreamUnaryCall[_Req, _Resp] = self._lazy.callable()(*args, **kwargs)
        return call


class _StreamStream(grpc.aio.StreamStreamMultiCallable[_Req, _Resp]):
    def __init__(self, lazy: _Lazy[_Req, _Resp]) -> None:
        self._lazy = lazy

    def __call__(self, *args: Any, **kwargs: Any) -> grpc.aio.StreamStreamCall[_Req, _Resp]:
        call: grpc.aio.StreamStreamCall[_Req, _Resp] = self._lazy.callable()(*args, **kwargs)
        return call
