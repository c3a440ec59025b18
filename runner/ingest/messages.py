"""PROTOCOL §1 messages: decoding frames and checking their shape. Pure code, no I/O."""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import zstandard

from runner.errors import ProtocolError

CLOSE_GOING_AWAY = 1001
CLOSE_MALFORMED = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_DISABLED = 4403
CLOSE_NO_HELLO = 4408
CLOSE_TOO_LARGE = 4413
CLOSE_TOO_MANY = 4429

NACK_BUFFER_FULL = "buffer_full"
NACK_RATE_LIMITED = "rate_limited"
NACK_TOO_LARGE = "too_large"
NACK_INVALID = "invalid"

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SESSION_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
MAX_SEQ = 2**53 - 1
PROTOCOL_VERSION = 1

_DCTX = zstandard.ZstdDecompressor()


@dataclass(frozen=True, slots=True)
class Hello:
    session_id: str
    token: str | None
    last_acked_seq: int
    sdk_name: str
    sdk_version: str
    traceparent: str | None


@dataclass(frozen=True, slots=True)
class Batch:
    seq: int
    events: list[Any]
    size: int
    received: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True, slots=True)
class BadBatch:
    """A batch whose seq is known but whose content is refused; answered with a nack."""

    seq: int
    code: str
    reason: str


def decompress(data: bytes, max_bytes: int) -> bytes:
    """Inflate one zstd frame, refusing output beyond max_bytes without inflating it all."""
    if not data.startswith(ZSTD_MAGIC):
        raise ProtocolError(CLOSE_MALFORMED, "binary frame is not a zstd frame")
    try:
        with _DCTX.stream_reader(io.BytesIO(data)) as reader:
            out = reader.read(max_bytes + 1)
    except zstandard.ZstdError as e:
        raise ProtocolError(CLOSE_MALFORMED, "corrupt zstd frame") from e
    if len(out) > max_bytes:
        raise ProtocolError(CLOSE_TOO_LARGE, "decompressed message exceeds max_message_bytes")
    return out


def decode(data: bytes, binary: bool, max_bytes: int) -> dict[str, Any]:
    """One frame → one JSON object (zstd-inflated when binary)."""
    if len(data) > max_bytes:
        raise ProtocolError(CLOSE_TOO_LARGE, "message exceeds max_message_bytes")
    raw = decompress(data, max_bytes) if binary else data
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(CLOSE_MALFORMED, "message is not valid JSON") from e
    if not isinstance(message, dict):
        raise ProtocolError(CLOSE_MALFORMED, "message is not a JSON object")
    return message


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_hello(message: dict[str, Any]) -> Hello:
    """Check a hello message (PROTOCOL §1)."""
    if message.get("type") != "hello":
        raise ProtocolError(CLOSE_MALFORMED, "expected a hello message first")
    if message.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ProtocolError(CLOSE_MALFORMED, "unsupported protocol version")
    session_id = message.get("session_id")
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
        raise ProtocolError(CLOSE_MALFORMED, "session_id must be 1-128 chars of [A-Za-z0-9_-]")
    token = message.get("token")
    if token is not None and not isinstance(token, str):
        raise ProtocolError(CLOSE_MALFORMED, "token must be a string")
    last = message.get("last_acked_seq", 0)
    last_seq = _int(last) if last is not None else 0
    if last_seq is None or not 0 <= last_seq <= MAX_SEQ:
        raise ProtocolError(CLOSE_MALFORMED, "last_acked_seq must be a non-negative integer")
    sdk = message.get("sdk")
    sdk = sdk if isinstance(sdk, dict) else {}
    traceparent = message.get("traceparent")
    return Hello(
        session_id=session_id,
        token=token,
        last_acked_seq=last_seq,
        sdk_name=str(sdk.get("name", ""))[:32],
        sdk_version=str(sdk.get("version", ""))[:32],
        traceparent=traceparent if isinstance(traceparent, str) else None,
    )


def parse_batch(message: dict[str, Any], size: int, max_events: int) -> Batch | BadBatch:
    """Check a batch message; a bad seq is malformed, bad events are a nack for that seq."""
    if message.get("type") != "batch":
        raise ProtocolError(CLOSE_MALFORMED, "expected a batch message")
    seq = _int(message.get("seq"))
    if seq is None or not 1 <= seq <= MAX_SEQ:
        raise ProtocolError(CLOSE_MALFORMED, "seq must be an integer from 1")
    events = message.get("events")
    if not isinstance(events, list):
        return BadBatch(seq, NACK_INVALID, "events must be a list")
    if len(events) > max_events:
        return BadBatch(seq, NACK_TOO_LARGE, f"more than {max_events} events")
    for event in events:
        if not isinstance(event, dict) or _int(event.get("type")) is None:
            return BadBatch(seq, NACK_INVALID, "each event is an object with an integer type")
    return Batch(seq=seq, events=events, size=size)


def welcome(
    session_id: str, resume_seq: int, sampled: bool, policy_version: int, limits: dict[str, int]
) -> bytes:
    return orjson.dumps(
        {
            "type": "welcome",
            "session_id": session_id,
            "resume_seq": resume_seq,
            "sampled": sampled,
            "policy_version": policy_version,
            "limits": limits,
        }
    )


def ack(seq: int) -> bytes:
    return orjson.dumps({"type": "ack", "seq": seq})


def nack(seq: int, code: str, retry_after_ms: int | None = None) -> bytes:
    body: dict[str, Any] = {"type": "nack", "seq": seq, "code": code}
    if retry_after_ms is not None:
        body["retry_after_ms"] = retry_after_ms
    return orjson.dumps(body)


def goaway(reason: str, reconnect_after_ms: int) -> bytes:
    return orjson.dumps(
        {"type": "goaway", "reason": reason, "reconnect_after_ms": reconnect_after_ms}
    )
