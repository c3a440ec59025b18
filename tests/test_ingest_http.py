"""`POST /v1/batch`: one batch per request, acked with 202 once durable."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import orjson
import pytest
import zstandard
from redis.asyncio import Redis

from runner.app import Runner
from runner.buffer.keys import Keys
from tests.conftest import http_url
from tests.support import API_KEY, DISABLED_KEY, TENANT, rrweb_batch


async def post(
    runner: Runner,
    body: bytes,
    token: str | None = API_KEY,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(http_url(runner, "/v1/batch"), data=io.BytesIO(body), headers=sent) as response,
    ):
        return response.status, orjson.loads(await response.read()), dict(response.headers)


def batch(seq: int = 1, session_id: str = "s-http", **extra: Any) -> bytes:
    message = {"type": "batch", "seq": seq, "session_id": session_id, "events": rrweb_batch(2)}
    return orjson.dumps({**message, **extra})


async def test_batch_is_stored_and_acked_202(runner: Runner, redis: Redis) -> None:
    """A valid batch is answered 202 with its ack, and is in the tenant stream."""
    status, body, _ = await post(runner, batch())
    assert (status, body) == (202, {"type": "ack", "seq": 1})
    assert await redis.xlen(Keys("tf").stream(TENANT)) == 1


async def test_resent_batch_is_acked_and_stored_once(runner: Runner, redis: Redis) -> None:
    """A beacon sent twice is acked twice and stored once."""
    assert (await post(runner, batch()))[0] == 202
    assert (await post(runner, batch()))[0] == 202
    assert await redis.xlen(Keys("tf").stream(TENANT)) == 1


async def test_zstd_body_is_accepted(runner: Runner) -> None:
    """A body that is one zstd frame of the batch message is accepted."""
    body = zstandard.ZstdCompressor().compress(batch(session_id="s-zstd-http"))
    status, reply, _ = await post(runner, body, headers={"Content-Type": "application/zstd"})
    assert (status, reply) == (202, {"type": "ack", "seq": 1})


@pytest.mark.parametrize(
    ("body", "token", "status", "code"),
    [
        (batch(), None, 401, "unauthorized"),
        (batch(), "tf_wrong_key_000", 401, "unauthorized"),
        (batch(), DISABLED_KEY, 403, "disabled"),
        (b"{nope", API_KEY, 400, "malformed"),
        (orjson.dumps({"type": "batch", "seq": 1, "events": []}), API_KEY, 400, "malformed"),
        (batch(seq=0), API_KEY, 400, "malformed"),
        (b"\x28\xb5\x2f\xfd" + b"\x00" * 32, API_KEY, 400, "malformed"),
        (b"x" * (4 * 1024 * 1024 + 1), API_KEY, 413, "too_large"),
        (
            zstandard.ZstdCompressor(level=19).compress(b" " * (32 * 1024 * 1024)),
            API_KEY,
            413,
            "too_large",
        ),
    ],
    ids=[
        "no-key",
        "unknown-key",
        "disabled",
        "not-json",
        "no-session-id",
        "seq-zero",
        "corrupt-zstd",
        "oversize",
        "zip-bomb",
    ],
)
async def test_bad_requests_get_clear_statuses(
    runner: Runner, body: bytes, token: str | None, status: int, code: str
) -> None:
    """Each bad request gets its documented status and error code, and nothing is stored."""
    got, reply, _ = await post(runner, body, token=token)
    assert (got, reply["error"]) == (status, code)


@pytest.mark.parametrize(
    ("events", "status", "code"),
    [("nope", 400, "invalid"), ([{"type": 3}] * 1001, 413, "too_large")],
    ids=["events-not-list", "too-many-events"],
)
async def test_bad_events_get_nack_with_status(
    runner: Runner, events: object, status: int, code: str
) -> None:
    """Bad events for a known seq get the nack body with a matching HTTP status."""
    got, reply, _ = await post(runner, batch(events=events))
    assert got == status
    assert reply == {"type": "nack", "seq": 1, "code": code}
