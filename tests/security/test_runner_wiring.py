"""Security controls on the real Runner: TLS and mTLS ingest, JWT hello, brute force, admin bind.

These run once runner/config.py mounts the runner.security settings and runner/app.py uses
them; until then they skip, saying so.
"""

from __future__ import annotations

import io
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
import trustme
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.exceptions import ConnectionClosed, WebSocketException

from runner.app import Runner
from runner.config import Config, IngestSection, ProjectConfig, parse_config
from runner.errors import ConfigError, StartupError
from runner.redact import Redactor
from tests.security.support import client_ssl, write_ca, write_leaf
from tests.support import API_KEY, TENANT, RedisProc, rrweb_batch

WIRED = "tls" in IngestSection.model_fields and "jwt" in ProjectConfig.model_fields
pytestmark = pytest.mark.skipif(
    not WIRED,
    reason="runner/config.py does not mount the runner.security settings yet "
    "([ingest.tls], [projects.jwt]); these tests check that wiring once it is in",
)
AUD, ISS = "traceflow-ingest", "https://idp.bank.example"


def config(tmp_path: Path, redis_url: str, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "runner": {"id": "runner-sec", "data_dir": str(tmp_path / "data")},
        "ingest": {"listen": "127.0.0.1:0", "hello_timeout_s": 2.0},
        "admin": {"listen": "127.0.0.1:0", "token": "admin-secret"},
        "buffer": {"redis_url": redis_url},
        "pii": {"workers": 1},
        "control_plane": {"policies_dir": str(tmp_path / "no-policies")},
        "projects": [{"id": "web", "tenant": TENANT, "api_keys": [API_KEY]}],
    }
    for name, values in sections.items():
        if name == "projects":
            data["projects"] = values
        else:
            data.setdefault(name, {}).update(values)
    return parse_config(data, environ={})


@pytest.fixture
def idp_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def secured(
    tmp_path: Path,
    redis_proc: RedisProc,
    redactor: Redactor,
    ca: trustme.CA,
    idp_key: ec.EllipticCurvePrivateKey,
) -> AsyncIterator[Runner]:
    """A Runner with mTLS on ingest, a JWT-trusting project and a tight brute-force limit."""
    cert, key = write_leaf(ca.issue_cert("localhost", "127.0.0.1"), tmp_path / "tls", "server")
    idp = tmp_path / "idp.pem"
    idp.write_bytes(
        idp_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    cfg = config(
        tmp_path,
        redis_proc.url,
        ingest={
            "tls": {
                "cert_file": str(cert),
                "key_file": str(key),
                "client_ca_file": str(write_ca(ca, tmp_path / "clients.pem")),
            },
            "auth_throttle": {"max_failures": 3, "block_s": 600},
        },
        projects=[
            {"id": "web", "tenant": TENANT, "api_keys": [API_KEY]},
            {
                "id": "app",
                "tenant": TENANT,
                "jwt": {"public_key_files": [str(idp)], "audience": [AUD], "issuer": [ISS]},
            },
        ],
    )
    instance = Runner(cfg, redactor=redactor)
    await instance.start()
    yield instance
    await instance.stop()


def hello(token: str, session_id: str) -> str:
    message = {"type": "hello", "v": 1, "token": token, "session_id": session_id, "sdk": {}}
    return orjson.dumps({**message, "last_acked_seq": 0}).decode()


async def say_hello(runner: Runner, context: ssl.SSLContext, token: str) -> dict[str, Any]:
    url = f"wss://localhost:{runner.ingest_address[1]}/v1/stream"
    async with websockets.connect(url, ssl=context, open_timeout=10) as ws:
        await ws.send(hello(token, "s-sec"))
        answer: dict[str, Any] = orjson.loads(await ws.recv())
        return answer


async def test_ingest_requires_client_certificate(secured: Runner, ca: trustme.CA) -> None:
    """An SDK with a certificate from the client CA is welcomed; one without never is."""
    sdk = ca.issue_cert("sdk@bank", common_name="sdk")
    assert (await say_hello(secured, client_ssl(ca, leaf=sdk), API_KEY))["type"] == "welcome"
    with pytest.raises((ssl.SSLError, OSError, WebSocketException, TimeoutError)):
        await say_hello(secured, client_ssl(ca), API_KEY)


async def test_jwt_in_hello(
    secured: Runner, ca: trustme.CA, idp_key: ec.EllipticCurvePrivateKey
) -> None:
    """A valid JWT in hello opens a session; an expired one is closed with 4401."""
    context = client_ssl(ca, leaf=ca.issue_cert("sdk@bank"))
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "sub": "user-1", "tid": TENANT, "exp": now + 300}
    token = jwt.encode(claims, idp_key, algorithm="ES256")
    assert (await say_hello(secured, context, token))["type"] == "welcome"
    expired = jwt.encode({**claims, "exp": now - 600}, idp_key, algorithm="ES256")
    with pytest.raises(ConnectionClosed) as caught:
        await say_hello(secured, context, expired)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 4401


async def test_brute_force_blocked_over_http(secured: Runner, ca: trustme.CA) -> None:
    """After max_failures bad keys a source gets 429 with Retry-After, even for a good key."""
    context = client_ssl(ca, leaf=ca.issue_cert("sdk@bank"))
    url = f"https://localhost:{secured.ingest_address[1]}/v1/batch"
    body = orjson.dumps({"type": "batch", "seq": 1, "session_id": "s-bf", "events": rrweb_batch(1)})

    async def post(token: str) -> tuple[int, dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http,
            http.post(url, data=io.BytesIO(body), headers=headers) as response,
        ):
            return response.status, dict(response.headers)

    statuses = [(await post(f"tf_guess_{i:08d}"))[0] for i in range(3)]
    assert statuses == [401, 401, 401]
    status, headers = await post(API_KEY)
    assert status == 429
    assert int(headers["Retry-After"]) > 500


async def test_status_and_metrics_show_certificate_expiry(secured: Runner) -> None:
    """runner status carries the ingest certificate's days left; /metrics its expiry."""
    tls = secured.status()["security"]["tls"]["ingest"]
    assert tls["certificate"]["days_left"] > 0
    assert tls["mutual"] is True
    assert b"traceflow_tls_certificate_expiring" in secured.metrics_text()


async def test_admin_off_loopback_needs_tls_and_token(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor
) -> None:
    """An admin listener on 0.0.0.0 without TLS is refused before anything listens."""

    async def start_exposed() -> None:
        cfg = config(tmp_path, redis_proc.url, admin={"listen": "0.0.0.0:0", "token": "x" * 32})
        instance = Runner(cfg, redactor=redactor)
        try:
            await instance.start()
        finally:
            await instance.stop()

    with pytest.raises((ConfigError, StartupError), match="admin"):
        await start_exposed()
