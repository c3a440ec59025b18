"""`POST /v1/batch`: one batch per request, for page-unload beacons and back-end SDKs.

The body is a batch message plus `session_id` (JSON, or a zstd frame of it);
credentials come in `Authorization: Bearer`. The reply is `202` with the ack,
after the batch is durable. Errors map to HTTP statuses:

| outcome                         | status | body                                  |
|---------------------------------|--------|---------------------------------------|
| stored or already stored        | 202    | `{"type":"ack","seq":n}`              |
| buffer full / Redis unavailable | 503    | nack `buffer_full`, `Retry-After`     |
| too many events                 | 413    | nack `too_large`                      |
| events not rrweb-shaped         | 400    | nack `invalid`                        |
| malformed JSON or envelope      | 400    | `{"error":"malformed","detail":...}`  |
| body over max_message_bytes     | 413    | `{"error":"too_large",...}`           |
| bad or missing key              | 401    | `{"error":"unauthorized",...}`        |
| project disabled                | 403    | `{"error":"disabled",...}`            |
"""

from __future__ import annotations

import asyncio
import math

import orjson
from aiohttp import web

from runner.errors import BufferUnavailable, ProtocolError
from runner.ingest import messages as m
from runner.ingest.auth import bearer
from runner.ingest.session import Ingestor
from runner.ingest.websocket import CONFIG_KEY, CONNECTIONS_KEY, INGESTOR_KEY
from runner.security.ratelimit import AuthThrottled

TRANSPORT = "http"

_STATUS_FOR_CLOSE = {
    m.CLOSE_MALFORMED: (400, "malformed"),
    m.CLOSE_UNAUTHORIZED: (401, "unauthorized"),
    m.CLOSE_DISABLED: (403, "disabled"),
    m.CLOSE_TOO_LARGE: (413, "too_large"),
    m.CLOSE_TOO_MANY: (429, "too_many_connections"),
}
_STATUS_FOR_NACK = {
    m.NACK_BUFFER_FULL: 503,
    m.NACK_RATE_LIMITED: 429,
    m.NACK_TOO_LARGE: 413,
    m.NACK_INVALID: 400,
}


def _error(status: int, code: str, detail: str) -> web.Response:
    body = orjson.dumps({"error": code, "detail": detail})
    return web.Response(status=status, body=body, content_type="application/json")


async def _read_body(request: web.Request, max_bytes: int) -> bytes:
    if request.content_length is not None and request.content_length > max_bytes:
        raise ProtocolError(m.CLOSE_TOO_LARGE, "body exceeds max_message_bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise ProtocolError(m.CLOSE_TOO_LARGE, "body exceeds max_message_bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def batch_handler(request: web.Request) -> web.Response:
    """Store one batch and answer 202 with its ack once durable."""
    ingestor: Ingestor = request.app[INGESTOR_KEY]
    cfg = request.app[CONFIG_KEY].ingest
    if not request.app[CONNECTIONS_KEY].accepting:
        return _error(503, "draining", "the Runner is draining; retry on another replica")
    try:
        try:
            async with asyncio.timeout(cfg.limits.body_timeout_s):
                raw = await _read_body(request, cfg.max_message_bytes)
        except TimeoutError:
            return _error(408, "timeout", "the body did not arrive in time")
        binary = raw.startswith(m.ZSTD_MAGIC)
        message = m.decode(raw, binary, cfg.max_message_bytes)
        hello = m.parse_hello(
            {
                **message,
                "type": "hello",
                "token": None,
                "last_acked_seq": 0,
                "traceparent": request.headers.get("traceparent"),
            }
        )
        batch = m.parse_batch(message, len(raw), cfg.max_events)
        session = await ingestor.open(
            hello, bearer(request.headers.get("Authorization")), TRANSPORT, request.remote or ""
        )
    except AuthThrottled as e:
        response = _error(429, "auth_throttled", e.reason)
        response.headers["Retry-After"] = e.retry_after_header
        return response
    except ProtocolError as e:
        status, code = _STATUS_FOR_CLOSE.get(e.close_code, (400, "malformed"))
        return _error(status, code, e.reason)
    except BufferUnavailable:
        return _error(503, "buffer_unavailable", "the buffer is unavailable; retry later")
    try:
        reply = await ingestor.batch(session, batch)
    finally:
        ingestor.close(session)
    answer = orjson.loads(reply)
    if answer["type"] == "ack":
        return web.Response(status=202, body=reply, content_type="application/json")
    status = _STATUS_FOR_NACK.get(answer["code"], 400)
    headers = {}
    if "retry_after_ms" in answer:
        headers["Retry-After"] = str(math.ceil(answer["retry_after_ms"] / 1000))
    return web.Response(status=status, body=reply, content_type="application/json", headers=headers)
