"""Exceptions raised by :class:`datalayer.Client` and :class:`datalayer.AsyncClient`.

Every failed call raises a :class:`DatalayerError` subclass chosen by its gRPC
status code. The rich error model (``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer) is decoded: ``InvalidArgument`` carries
the ``google.rpc.BadRequest`` field violations, ``Unavailable`` the delay of a
``google.rpc.RetryInfo``, and every error keeps all decoded details.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DatalayerError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "from_rpc_error",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"

_M = TypeVar("_M", bound=Message)

_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.ErrorInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


class FieldViolation(NamedTuple):
    """One bad field of a request: its path (``limit.gcra.period``) and why."""

    field: str
    description: str


class DatalayerError(Exception):
    """A call failed. Subclasses name the gRPC status code.

    Attributes:
        code: the gRPC status code.
        message: the status message sent by the service.
        details: the decoded ``google.rpc.Status`` details (``BadRequest``,
            ``RetryInfo``, ...); unknown detail types stay ``google.protobuf.Any``.
        status: the whole ``google.rpc.Status``, when the service sent one.
        retry_after: seconds the service asked the caller to wait before
            retrying (``google.rpc.RetryInfo``), or ``None``.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: Sequence[Message] = (),
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details: list[Message] = list(details)
        self.status = status
        self.retry_after: float | None = None
        for detail in self.details:
            if isinstance(detail, error_details_pb2.RetryInfo) and detail.HasField("retry_delay"):
                self.retry_after = detail.retry_delay.ToTimedelta().total_seconds()

    def detail(self, kind: type[_M]) -> _M | None:
        """The first detail of the given message type, or ``None``."""
        for d in self.details:
            if isinstance(d, kind):
                return d
        return None

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.name})"


class InvalidArgument(DatalayerError):
    """The request is wrong. ``field_violations`` names each bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    @property
    def field_violations(self) -> list[FieldViolation]:
        """``(field, description)`` pairs from ``google.rpc.BadRequest``."""
        out: list[FieldViolation] = []
        for d in self.details:
            if isinstance(d, error_details_pb2.BadRequest):
                out.extend(FieldViolation(v.field, v.description) for v in d.field_violations)
        return out


class Unavailable(DatalayerError):
    """The service or its store cannot answer now; ``retry_after`` (seconds)
    says when to try again if the service said so (``google.rpc.RetryInfo``).

    With ``RetryInfo`` (or when no connection could be made) a repeat is
    safe, and the client already retried ``retries`` times before raising
    this. Without it the call may have been applied (the message says so):
    the client did not retry, and only the caller knows whether repeating it
    is safe (e.g. an ``enqueue`` with a ``dedup_id`` is)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(DatalayerError):
    """The call's deadline passed before an answer arrived."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(DatalayerError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DatalayerError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DatalayerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(DatalayerError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(DatalayerError):
    """A message was larger than the service accepts."""

    code = grpc.StatusCode.OUT_OF_RANGE


class PermissionDenied(DatalayerError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(DatalayerError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(DatalayerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Cancelled(DatalayerError):
    code = grpc.StatusCode.CANCELLED


class Unimplemented(DatalayerError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(DatalayerError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[DatalayerError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unavailable,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Cancelled,
        Unimplemented,
        Internal,
    )
}


def _unpack(detail: any_pb2.Any) -> Message:
    for kind in _DETAIL_TYPES:
        if detail.TypeName() == kind.DESCRIPTOR.full_name:
            msg = kind()
            if detail.Unpack(msg):
                return msg
    return detail


def _status_from_metadata(metadata: object) -> status_pb2.Status | None:
    if not metadata:
        return None
    for item in metadata:  # type: ignore[attr-defined]
        key, value = item[0], item[1]
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def from_rpc_error(error: grpc.RpcError) -> DatalayerError:
    """Turns a ``grpc.RpcError`` (sync or ``grpc.aio.AioRpcError``) into the
    matching :class:`DatalayerError`, with its rich details decoded."""
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(error)
    status: status_pb2.Status | None = None
    if isinstance(error, grpc.Call):
        try:
            status = rpc_status.from_call(error)
        except ValueError:  # details inconsistent with the status line
            status = None
    if status is None:  # grpc.aio errors, or the fallback
        trailers_fn = getattr(error, "trailing_metadata", None)
        status = _status_from_metadata(trailers_fn() if callable(trailers_fn) else None)
    details: list[Message] = [_unpack(d) for d in status.details] if status is not None else []
    if status is not None and status.message:
        message = status.message
    cls = _BY_CODE.get(code, DatalayerError)
    return cls(message, code=code, details=details, status=status)
