"""Bad input gets the documented close code or nack, and the server keeps serving others."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import websockets
import zstandard
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from runner.app import Runner
from runner.config import Config
from runner.redact import Redactor
from tests.conftest import ws_url
from tests.support import API_KEY, DISABLED_KEY, Sdk, make_config, rrweb_batch

SECRET_TEXT = "Kavya Iyer kavya.iyer@example.in"


async def close_code(ws: ClientConnection, wait_s: float = 10.0) -> int:
    """Read until the server closes the connection and return its close code."""

    async def read_until_closed() -> None:
        while True:
            await ws.recv()

    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(read_until_closed(), wait_s)
    assert ws.close_code is not None
    return ws.close_code


async def connect(runner: Runner) -> ClientConnection:
    return await websockets.connect(ws_url(runner), max_size=None, compression=None)


def hello(token: str = API_KEY, session_id: str = "s-bad") -> str:
    body = {"type": "hello", "v": 1, "token": token, "session_id": session_id}
    return orjson.dumps(body).decode()


async def still_serves(runner: Runner) -> None:
    """A fresh well-behaved session still gets its batch acked."""
    sdk = Sdk(ws_url(runner), "s-good")
    await sdk.connect()
    assert await sdk.batch(1) == {"type": "ack", "seq": 1}
    await sdk.close()


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ("{not json", 4400),
        ("[1, 2]", 4400),
        (orjson.dumps({"type": "batch", "seq": 1, "events": []}).decode(), 4400),
        (orjson.dumps({"type": "hello", "session_id": "bad id!"}).decode(), 4400),
        (orjson.dumps({"type": "hello", "session_id": "x" * 129}).decode(), 4400),
        (orjson.dumps({"type": "hello", "session_id": "s", "token": 5}).decode(), 4400),
        (orjson.dumps({"type": "hello", "session_id": "s"}).decode(), 4401),
        (hello(token="tf_not_a_known_key"), 4401),
        (hello(token=DISABLED_KEY), 4403),
    ],
    ids=[
        "not-json",
        "not-object",
        "batch-before-hello",
        "bad-session-id",
        "long-session-id",
        "token-not-string",
        "no-credentials",
        "unknown-key",
        "disabled-project",
    ],
)
async def test_bad_hello_gets_close_code(runner: Runner, first: str, code: int) -> None:
    """Each kind of bad first message closes with its PROTOCOL §1 code."""
    ws = await connect(runner)
    await ws.send(first)
    assert await close_code(ws) == code
    await still_serves(runner)


async def test_no_hello_in_time_closes_4408(runner: Runner) -> None:
    """A client that connects and says nothing is closed with 4408 after hello_timeout_s."""
    ws = await connect(runner)
    assert await close_code(ws) == 4408
    await still_serves(runner)


async def test_key_in_header_is_accepted(runner: Runner) -> None:
    """The API key may come in an Authorization header instead of the hello."""
    ws = await websockets.connect(
        ws_url(runner), additional_headers={"Authorization": f"Bearer {API_KEY}"}
    )
    await ws.send(orjson.dumps({"type": "hello", "v": 1, "session_id": "s-header"}).decode())
    assert orjson.loads(await ws.recv())["type"] == "welcome"
    await ws.close()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{oops", 4400),
        (orjson.dumps({"type": "batch", "seq": "1", "events": []}).decode(), 4400),
        (orjson.dumps({"type": "batch", "seq": 0, "events": []}).decode(), 4400),
        (orjson.dumps({"type": "batch", "seq": True, "events": []}).decode(), 4400),
        (orjson.dumps({"type": "nonsense"}).decode(), 4400),
    ],
    ids=["not-json", "seq-string", "seq-zero", "seq-bool", "unknown-type"],
)
async def test_malformed_batch_closes_4400(runner: Runner, message: str, code: int) -> None:
    """A batch without a usable seq, or a message of unknown type, closes with 4400."""
    sdk = Sdk(ws_url(runner), "s-malformed")
    await sdk.connect()
    assert sdk.ws is not None
    await sdk.ws.send(message)
    assert await close_code(sdk.ws) == code
    await still_serves(runner)


@pytest.mark.parametrize(
    ("events", "code"),
    [
        ({"not": "a list"}, "invalid"),
        ([1, 2, 3], "invalid"),
        ([{"type": "2"}], "invalid"),
        ([{"type": 3, "data": {}}] * 1001, "too_large"),
    ],
    ids=["events-object", "events-numbers", "type-string", "too-many-events"],
)
async def test_bad_events_get_nack_and_session_continues(
    runner: Runner, events: object, code: str
) -> None:
    """Bad events for a known seq get a do-not-retry nack; the session goes on."""
    sdk = Sdk(ws_url(runner), "s-nack")
    await sdk.connect()
    await sdk.send({"type": "batch", "seq": 1, "events": events})
    assert await sdk.recv() == {"type": "nack", "seq": 1, "code": code}
    assert await sdk.batch(1) == {"type": "ack", "seq": 1}
    await sdk.close()


async def test_oversize_frame_closes_4413(
    tmp_path_factory: pytest.TempPathFactory, redis_proc: object, redactor: Redactor
) -> None:
    """A frame over max_message_bytes is refused with 4413 before it is parsed."""
    from tests.support import RedisProc

    assert isinstance(redis_proc, RedisProc)
    cfg: Config = make_config(
        tmp_path_factory.mktemp("data"), redis_proc.url, ingest={"max_message_bytes": 64 * 1024}
    )
    instance = Runner(cfg, redactor=redactor)
    await instance.start()
    try:
        sdk = Sdk(ws_url(instance), "s-big")
        await sdk.connect()
        assert sdk.ws is not None
        big = [{"type": 5, "data": {"tag": "x", "payload": "a" * 100_000}, "timestamp": 1}]
        await sdk.ws.send(orjson.dumps({"type": "batch", "seq": 1, "events": big}).decode())
        assert await close_code(sdk.ws) == 4413
        await still_serves(instance)
    finally:
        await instance.stop()


async def test_binary_frame_that_is_not_zstd_closes_4400(runner: Runner) -> None:
    """A binary frame without the zstd magic is malformed."""
    sdk = Sdk(ws_url(runner), "s-notzstd")
    await sdk.connect()
    assert sdk.ws is not None
    await sdk.ws.send(b'{"type":"batch","seq":1,"events":[]}')
    assert await close_code(sdk.ws) == 4400


async def test_corrupt_zstd_frame_closes_4400(runner: Runner) -> None:
    """A binary frame with the zstd magic but garbage after it is malformed."""
    sdk = Sdk(ws_url(runner), "s-corrupt")
    await sdk.connect()
    assert sdk.ws is not None
    await sdk.ws.send(b"\x28\xb5\x2f\xfd" + b"\xff" * 64)
    assert await close_code(sdk.ws) == 4400


async def test_zip_bomb_closes_4413(runner: Runner) -> None:
    """A small zstd frame that inflates past max_message_bytes is refused without inflating it."""
    sdk = Sdk(ws_url(runner), "s-bomb")
    await sdk.connect()
    assert sdk.ws is not None
    bomb = zstandard.ZstdCompressor(level=19).compress(b" " * (64 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    await sdk.ws.send(bomb)
    assert await close_code(sdk.ws) == 4413
    await still_serves(runner)


async def test_too_many_connections_for_a_project_closes_4429(
    tmp_path_factory: pytest.TempPathFactory, redis_proc: object, redactor: Redactor
) -> None:
    """Beyond max_connections_per_project, a new session is closed with 4429."""
    from tests.support import RedisProc

    assert isinstance(redis_proc, RedisProc)
    cfg = make_config(
        tmp_path_factory.mktemp("data"), redis_proc.url, ingest={"max_connections_per_project": 2}
    )
    instance = Runner(cfg, redactor=redactor)
    await instance.start()
    try:
        first, second = Sdk(ws_url(instance), "s-1"), Sdk(ws_url(instance), "s-2")
        await first.connect()
        await second.connect()
        third = await connect(instance)
        await third.send(hello(session_id="s-3"))
        assert await close_code(third) == 4429
        await first.close()
        await second.close()
    finally:
        await instance.stop()


@pytest.mark.parametrize(
    "ingest",
    [{"heartbeat_s": 0.5}, {"idle_timeout_s": 1.0}],
    ids=["no-pong-heartbeat", "stalled-mid-frame-idle"],
)
async def test_stalled_client_is_dropped_and_others_are_served(
    tmp_path_factory: pytest.TempPathFactory,
    redis_proc: object,
    ingest: dict[str, float],
    redactor: Redactor,
) -> None:
    """A client that stalls mid-frame and answers no ping is dropped; others are served."""
    from tests.support import RedisProc, until

    assert isinstance(redis_proc, RedisProc)
    cfg = make_config(tmp_path_factory.mktemp("data"), redis_proc.url, ingest=ingest)
    instance = Runner(cfg, redactor=redactor)
    await instance.start()
    assert instance.ingestor is not None
    opened = instance.ingestor.stats.sessions_open
    try:
        # A raw socket that sends a hello, then half a frame, then nothing, and never reads.
        _reader, writer = await asyncio.open_connection("127.0.0.1", instance.ingest_address[1])
        writer.write(
            b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        text = hello(session_id="s-slow").encode()
        writer.write(bytes([0x81, 0x80 | len(text)]) + b"\x00" * 4 + text)
        writer.write(bytes([0x81, 0x80 | 100]) + b"\x00" * 4 + b'{"type":"ba')
        await writer.drain()
        await until(lambda: opened.get("websocket") == 1, what="the slow session to open")
        await still_serves(instance)
        await until(lambda: opened.get("websocket") == 0, what="the slow session to be dropped")
        writer.close()
    finally:
        await instance.stop()


async def test_logs_never_carry_payload_text(runner: Runner) -> None:
    """Across good and bad traffic, no log line carries event text or the API key."""
    with capture_logs() as logs:
        sdk = Sdk(ws_url(runner), "s-logs")
        await sdk.connect()
        await sdk.batch(1, rrweb_batch(2, text=SECRET_TEXT))
        await sdk.send({"type": "batch", "seq": 2, "events": [SECRET_TEXT]})
        await sdk.recv()
        assert sdk.ws is not None
        await sdk.ws.send("{" + SECRET_TEXT)
        await close_code(sdk.ws)
    assert logs, "expected some log lines"
    dump = orjson.dumps(logs, default=str).decode()
    assert "Kavya" not in dump
    assert "kavya.iyer" not in dump
    assert API_KEY not in dump
