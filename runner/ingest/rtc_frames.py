"""PROTOCOL §1 "WebRTC data channel framing": `frag` messages. Pure code, no I/O.

A message longer than the channel's maximum message size travels as text
messages `{"type":"frag","id":…,"i":k,"n":N,"b64":…}`, each holding the base64
of one slice of the message's bytes. The sender cuts slices at multiples of 3
bytes, so the b64 strings can also be joined before decoding. The receiver
joins one message at a time, in order, and refuses one that outgrows
max_message_bytes before it has all of it.
"""

from __future__ import annotations

import binascii
import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson

from runner.errors import ProtocolError
from runner.ingest import messages as m

FRAG = "frag"
FRAG_MARK = b'"frag"'
_ENVELOPE = b'{"type":"frag","id":"%s","i":%d,"n":%d,"b64":"%s"}'
_ids = itertools.count(1)


def next_id() -> str:
    return format(next(_ids), "x")


def fragment(data: bytes, limit: int, message_id: str | None = None) -> list[bytes]:
    """The message as is when it fits in `limit` bytes, else its `frag` messages."""
    if len(data) <= limit:
        return [data]
    mid = message_id or next_id()
    # Room for the base64 in one envelope, with the widest i and n this message can have.
    digits = len(str(len(data)))
    overhead = len(_ENVELOPE % (mid.encode(), 0, 0, b"")) + 2 * digits
    room = (limit - overhead) // 4 * 3
    if room < 3:
        raise ValueError(f"limit {limit} leaves no room for a fragment")
    n = -(-len(data) // room)
    return [
        _ENVELOPE % (mid.encode(), i, n, binascii.b2a_base64(data[pos : pos + room], newline=False))
        for i, pos in enumerate(range(0, len(data), room))
    ]


def parse_frag(raw: bytes) -> dict[str, Any] | None:
    """A `frag` message's fields, or None for any other message. Call only when FRAG_MARK is in
    raw: a cheap test that skips parsing the JSON of ordinary batches twice."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(m.CLOSE_MALFORMED, "message is not valid JSON") from e
    if not isinstance(message, dict) or message.get("type") != FRAG:
        return None
    return message


@dataclass(slots=True)
class Defragmenter:
    """Joins the fragments of one message at a time; the joined size is capped."""

    max_bytes: int
    _id: str | None = None
    _n: int = 0
    _parts: list[bytes] = field(default_factory=list)
    _size: int = 0

    @property
    def busy(self) -> bool:
        """A message is partly received."""
        return self._id is not None

    @property
    def pending_bytes(self) -> int:
        return self._size

    def reset(self) -> None:
        self._id, self._n, self._parts, self._size = None, 0, [], 0

    def feed(self, frag: dict[str, Any]) -> bytes | None:
        """Add one fragment; the whole message once its last fragment is in, else None.

        On a ProtocolError the partial message is dropped."""
        try:
            return self._feed(frag)
        except ProtocolError:
            self.reset()
            raise

    def _feed(self, frag: dict[str, Any]) -> bytes | None:
        fid, b64 = frag.get("id"), frag.get("b64")
        i, n = _count(frag.get("i")), _count(frag.get("n"))
        if not isinstance(fid, str) or not 1 <= len(fid) <= 64 or not isinstance(b64, str):
            raise ProtocolError(m.CLOSE_MALFORMED, "frag needs a string id (1-64) and b64")
        if i is None or n is None or i >= n:
            raise ProtocolError(m.CLOSE_MALFORMED, "frag needs integers 0 <= i < n")
        if self._id is None:
            if i != 0:
                raise ProtocolError(m.CLOSE_MALFORMED, "fragmented message does not start at i=0")
            self._id, self._n = fid, n
        elif fid != self._id or n != self._n or i != len(self._parts):
            raise ProtocolError(m.CLOSE_MALFORMED, "fragment out of order or of another message")
        if (len(b64) // 4) * 3 + self._size > self.max_bytes + 3:
            raise ProtocolError(m.CLOSE_TOO_LARGE, "fragmented message exceeds max_message_bytes")
        try:
            part = binascii.a2b_base64(b64, strict_mode=True)
        except binascii.Error as e:
            raise ProtocolError(m.CLOSE_MALFORMED, "frag b64 is not valid base64") from e
        self._size += len(part)
        if self._size > self.max_bytes:
            raise ProtocolError(m.CLOSE_TOO_LARGE, "fragmented message exceeds max_message_bytes")
        self._parts.append(part)
        if len(self._parts) < self._n:
            return None
        whole = b"".join(self._parts)
        self.reset()
        return whole


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**31
    return value if ok else None
