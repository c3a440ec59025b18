"""The parent's end of a worker's pipe, driven by the event loop itself (no threads).

The worker keeps a plain blocking `multiprocessing.connection.Connection`; this end speaks the
same framing (a 4-byte big-endian signed length, or -1 and an 8-byte length for huge
messages, then a pickle) on the non-blocking socket, from `loop.add_reader` /
`loop.add_writer` callbacks. Nothing here waits: a write the socket cannot take now is kept
and finished when it becomes writable, and reads take whatever has arrived and hand every
complete message to `on_message`. Compared with a reader and a writer thread per worker this
saves two thread hand-offs per batch, each of which had to win the GIL back from a busy loop.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

_READ_CHUNK = 1 << 20
_SMALL_MAX = 0x7FFFFFFF
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


def frame(message: Any) -> list[bytes | memoryview]:
    """A message as `Connection.send` would write it: length header(s), then its pickle."""
    data = ForkingPickler.dumps(message)
    size = len(data)
    if size > _SMALL_MAX:
        return [_SHORT.pack(-1), _LONG.pack(size), data]
    return [_SHORT.pack(size), data]


class Channel:
    """One duplex pipe to a worker, read and written on the event loop."""

    def __init__(
        self,
        conn: Connection,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Any], None],
        on_closed: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._fd = conn.fileno()
        self._loop = loop
        self._on_message = on_message
        self._on_closed = on_closed
        self._in = bytearray()
        self._out = bytearray()
        self._closed = False
        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, self._readable)

    @property
    def closed(self) -> bool:
        """The worker's end is gone (or this end was closed)."""
        return self._closed

    def send(self, message: Any) -> None:
        """Queue one message (pickled now: a payload that cannot be pickled raises here)."""
        parts = frame(message)
        if self._closed:
            return
        if self._out:
            for part in parts:
                self._out += part
            return
        try:
            written = os.writev(self._fd, parts)
        except BlockingIOError:
            written = 0
        except OSError:
            self._close()
            return
        total = sum(len(p) for p in parts)
        if written < total:
            for part in parts:
                self._out += part
            del self._out[:written]
            self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        try:
            written = os.write(self._fd, self._out)
        except BlockingIOError:
            return
        except OSError:
            self._close()
            return
        del self._out[:written]
        if not self._out:
            self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        buf = self._in
        while True:
            try:
                chunk = os.read(self._fd, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._deliver()
                self._close()
                return
            buf += chunk
            if len(chunk) < _READ_CHUNK:
                break
        self._deliver()

    def _deliver(self) -> None:
        """Hand over every complete message in the input buffer."""
        buf = self._in
        pos = 0
        messages: list[Any] = []
        with memoryview(buf) as view:
            while len(buf) - pos >= 4:
                (size,) = _SHORT.unpack_from(buf, pos)
                head = 4
                if size == -1:
                    if len(buf) - pos < 12:
                        break
                    (size,) = _LONG.unpack_from(buf, pos + 4)
                    head = 12
                end = pos + head + size
                if len(buf) < end:
                    break
                with view[pos + head : end] as pickled:  # unpickled in place, not copied
                    messages.append(ForkingPickler.loads(pickled))
                pos = end
        if pos:
            del buf[:pos]
        for message in messages:
            self._on_message(message)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._out.clear()
        self._on_closed()

    def close(self) -> None:
        """Stop reading and writing and close the pipe (does not call `on_closed`)."""
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._conn.close()
