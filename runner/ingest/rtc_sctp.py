"""Hold a peer to the SCTP receive window that aiortc advertises but does not enforce.

aiortc 1.16 keeps the fragments of an SCTP message in its reassembly until the last one
arrives, and lowers the receive window it advertises (1 MiB) by what it holds, but never
refuses data beyond that window. A browser's SCTP stack stops at the window; a sender
that ignores it (a hand-made one, or aiortc's own sender, which does not track the peer's
window) can make the Runner hold one message of any size before the data-channel layer,
with its `max_message_bytes`, ever sees it. `bound_receive_window` wraps the transport's
data-chunk handler on this one peer: once more than `slack` bytes beyond the window are
held, further chunks are discarded and `on_violation` is called (the Runner closes the
peer). Pinned to aiortc 1.16 in pyproject; tests/webrtc/test_limits.py proves it on the
real library.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiortc.rtcsctptransport import RTCSctpTransport

WINDOW_SLACK_BYTES = 256 * 1024
"""Beyond the advertised window a compliant sender sends at most one packet (a window
probe); this much more (aiortc's largest message) is never a compliant peer."""


def bound_receive_window(
    sctp: RTCSctpTransport, on_violation: Callable[[], None], slack: int = WINDOW_SLACK_BYTES
) -> None:
    """Call `on_violation` once, and hold nothing more, when the peer overruns the window."""
    receive: Callable[[Any], Awaitable[None]] = sctp._receive_data_chunk
    violated = False

    async def checked(chunk: Any) -> None:
        nonlocal violated
        if violated:
            return
        await receive(chunk)
        if sctp._advertised_rwnd < -slack:
            violated = True
            on_violation()

    sctp._receive_data_chunk = checked  # type: ignore[method-assign]
