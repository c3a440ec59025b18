"""The CLI's side of the admin listener: `runner status` and `runner drain` talk through this.

Plain HTTP to a loopback listener, or https when `[admin.tls]` is set: the
listener's chain and host name are verified against `[admin.client] ca_file`
(or the system store), and `[admin.client] cert_file` is presented when the
listener requires client certificates. A wildcard listener is reached on
127.0.0.1; `[admin.client] url` names another address. Blocking (urllib): the
CLI has no event loop.
"""

from __future__ import annotations

import http.client
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from runner.admin.token import cli_token
from runner.config import Config
from runner.errors import ConfigError, StartupError
from runner.security.settings import OutboundTlsSettings
from runner.security.tls import TlsConfigError, client_context

WILDCARDS = ("0.0.0.0", "::", "[::]")  # noqa: S104 - names of binds, reached on loopback
TIMEOUT_S = 10.0


class AdminSetupError(Exception):
    """The CLI cannot build its admin client from the configuration; the message says why."""


class AdminUnreachable(Exception):
    """Nothing answers on the admin listener, or not over a connection the CLI can trust."""


def base_url(cfg: Config) -> str:
    """Where the admin listener is reached: `[admin.client] url`, else from `[admin] listen`."""
    if cfg.admin.client.url:
        return cfg.admin.client.url
    host, _, port = cfg.admin.listen.rpartition(":")
    if host in WILDCARDS:
        host = "127.0.0.1"
    scheme = "https" if cfg.admin.tls.enabled else "http"
    return f"{scheme}://{host}:{port}"


def _tls_context(cfg: Config) -> ssl.SSLContext:
    client = cfg.admin.client
    if cfg.admin.tls.mutual and client.cert_file is None:
        raise AdminSetupError(
            "the admin listener requires a client certificate ([admin.tls] client_ca_file is "
            "set): set [admin.client] cert_file (and key_file)"
        )
    settings = OutboundTlsSettings(
        ca_file=client.ca_file, client_cert=client.cert_file, client_key=client.key_file
    )
    try:
        return client_context(settings)
    except TlsConfigError as e:
        raise AdminSetupError(f"[admin.client]: {e}") from e


def _describe(error: BaseException) -> str:
    """A one-line reason for a failed request; TLS failures say what to check."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, ssl.SSLCertVerificationError):
        return (
            "TLS: the admin listener's certificate is not trusted "
            f"({reason.verify_message or reason.reason}); check [admin.client] ca_file, "
            "and that the certificate names the host the CLI connects to"
        )
    if isinstance(reason, ssl.SSLError):
        return (
            f"TLS handshake with the admin listener failed ({reason.reason or reason}); "
            "check [admin.client] cert_file / ca_file"
        )
    if isinstance(reason, http.client.HTTPException):
        return f"the connection broke ({type(reason).__name__})"
    return str(reason)


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        return {"error": raw[:200].decode(errors="replace")}


@dataclass
class AdminClient:
    base: str
    token: str
    context: ssl.SSLContext | None

    @classmethod
    def from_config(cls, cfg: Config, environ: Mapping[str, str] | None = None) -> AdminClient:
        """Raises `AdminSetupError` when TLS files or the token cannot be read."""
        env = os.environ if environ is None else environ
        base = base_url(cfg)
        try:
            token = env.get("RUNNER_ADMIN_TOKEN") or cli_token(cfg)
        except (ConfigError, StartupError) as e:
            raise AdminSetupError(str(e)) from e
        context = _tls_context(cfg) if base.startswith("https://") else None
        return cls(base, token, context)

    def _open(self, method: str, path: str) -> http.client.HTTPResponse:
        request = urllib.request.Request(  # noqa: S310 - an http(s) URL built from config
            f"{self.base}{path}",
            method=method,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        response: http.client.HTTPResponse = urllib.request.urlopen(  # noqa: S310
            request, timeout=TIMEOUT_S, context=self.context
        )
        return response

    def request(self, method: str, path: str) -> tuple[int, Any]:
        """One request: (status, parsed JSON body). Raises `AdminUnreachable`."""
        try:
            with self._open(method, path) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as e:
            return e.code, _json(e.read())
        except (OSError, http.client.HTTPException) as e:
            raise AdminUnreachable(_describe(e)) from e

    def lines(self, method: str, path: str) -> tuple[int, str, Iterator[Any]]:
        """A streamed answer: (status, content type, its NDJSON lines parsed one by one).

        A non-2xx answer comes back as one parsed JSON body. Reading a line may raise
        `AdminUnreachable` when the connection breaks.
        """
        try:
            response = self._open(method, path)
        except urllib.error.HTTPError as e:
            return e.code, "application/json", iter([_json(e.read())])
        except (OSError, http.client.HTTPException) as e:
            raise AdminUnreachable(_describe(e)) from e
        kind = response.headers.get_content_type()

        def read() -> Iterator[Any]:
            with response:
                while True:
                    try:
                        line = response.readline()
                    except (OSError, http.client.HTTPException) as e:
                        raise AdminUnreachable(_describe(e)) from e
                    if not line:
                        return
                    if line.strip():
                        yield _json(line)

        return response.status, kind, read()
