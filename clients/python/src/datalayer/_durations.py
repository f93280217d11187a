"""Durations of the rate-limit, cache and session helpers.

A :data:`DurationMs` is a string of one or more ``<number><unit>`` parts
(``"10s"``, ``"1 m"``, ``"500ms"``, ``"2h"``, ``"1m30s"``, ``"1.5s"``; units
``ns``, ``us``, ``ms``, ``s``, ``m``, ``h``, ``d``), a
:class:`datetime.timedelta`, or an ``int`` of **milliseconds** (as in
Upstash's clients).

Note the difference with the lock helpers (:func:`datalayer.parse_duration`),
where a bare number is seconds: to keep the two from being confused, a
``float`` is refused here (``TypeError``), and so is a string without a unit
(``ValueError``). Say ``"1.5s"`` or ``1500``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from fractions import Fraction
from typing import Union

from google.protobuf import duration_pb2

__all__ = ["DurationMs", "parse_ms"]

#: ``"10s"``, ``"1 m"``, ``"500ms"``, a ``timedelta``, or ``int`` milliseconds.
DurationMs = Union[str, int, timedelta]

_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
}
# "ms" before "m" and "s", so that "10ms" is not "10m" followed by "s".
_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ns|us|µs|ms|s|m|h|d)\s*")
#: google.protobuf.Duration's range.
_MAX_NS = 315_576_000_000 * 1_000_000_000


def _nanos(value: DurationMs, what: str) -> int:
    """``value`` in whole nanoseconds, validated (see :func:`parse_ms`)."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a duration such as '10s', a timedelta or int milliseconds, got {value!r}")
    if isinstance(value, timedelta):
        ns = ((value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds) * 1000
    elif isinstance(value, int):
        ns = value * 1_000_000
    elif isinstance(value, float):
        raise TypeError(
            f"{what}: a float is ambiguous (seconds or milliseconds?), got {value!r}; "
            f"give int milliseconds ({round(value * 1000)!r} for {value!r} seconds), a timedelta, "
            f"or a string such as '{value:g}s'"
        )
    elif isinstance(value, str):
        text = value.strip()
        total, pos = Fraction(0), 0
        while pos < len(text):
            m = _PART.match(text, pos)
            if m is None:
                break
            total += Fraction(m.group(1)) * _NS[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            hint = " (add a unit: a bare number is ambiguous)" if _is_number(text) else ""
            raise ValueError(
                f"{what} must be a duration such as '10s', '1 m', '500ms' or '2h' "
                f"(units ns, us, ms, s, m, h, d), got {value!r}{hint}"
            )
        ns = round(total)
    else:
        raise TypeError(
            f"{what} must be a duration such as '10s', a timedelta or int milliseconds, got {type(value).__name__}"
        )
    if ns < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    if ns > _MAX_NS:
        raise ValueError(f"{what} is too long, got {value!r}")
    return ns


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_ms(value: DurationMs, what: str = "duration") -> float:
    """A duration in milliseconds (a float: ``"250us"`` is ``0.25``).

    ``value`` is a string (``"10s"``, ``"1 m"``, ``"500ms"``, ``"2h"``,
    ``"1m30s"``; units ``ns``, ``us``, ``ms``, ``s``, ``m``, ``h``, ``d``),
    a ``timedelta``, or an ``int`` of milliseconds. Raises ``TypeError`` for
    any other type (a ``float`` or a ``bool`` included) and ``ValueError``
    for a malformed string, a string without a unit, or a negative duration.
    ``what`` names the argument in the message.
    """
    return _nanos(value, what) / 1_000_000


def _seconds(value: DurationMs, what: str) -> float:
    return _nanos(value, what) / 1_000_000_000


def _duration_pb(value: DurationMs, what: str, *, positive: bool = False) -> duration_pb2.Duration:
    ns = _nanos(value, what)
    if positive and ns == 0:
        raise ValueError(f"{what} must be longer than zero, got {value!r}")
    d = duration_pb2.Duration()
    d.FromNanoseconds(ns)
    return d


def _pb_seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1_000_000_000
