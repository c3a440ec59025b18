"""`runner status` and `runner drain` over TLS and mutual TLS to a real `runner serve`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
import pytest
import trustme

from runner.admin.client import base_url
from runner.config import parse_config
from runner.errors import ConfigError
from tests.security.support import client_ssl, write_ca, write_leaf
from tests.support import REPO, RunnerProcess

TOKEN = "admin-token-long-enough-for-exposure-0123"
ENV = {"PATH": "/usr/bin:/bin", "COLUMNS": "120"}


async def run_cli(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runner.cli", *args, "--config", str(config),
        cwd=REPO, env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def variant(config: Path, name: str, old: str, new: str) -> Path:
    """A copy of runner.toml for the CLI with one piece of `[admin.client]` changed."""
    text = config.read_text()
    assert old in text
    path = config.with_name(name)
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.timeout(240)
async def test_admin_commands_speak_mutual_tls_and_refuse_an_untrusted_listener(
    tmp_path: Path, ca: trustme.CA, other_ca: trustme.CA
) -> None:
    """status/drain work over mTLS; a wrong CA or no client cert fails clearly, no traceback."""
    certs = tmp_path / "certs"
    cert, key = write_leaf(ca.issue_cert("localhost", "127.0.0.1"), certs, "admin")
    cli_leaf = ca.issue_cert("runner-cli.test")
    cli_cert, cli_key = write_leaf(cli_leaf, certs, "cli")
    ca_file = write_ca(ca, certs / "ca.pem")
    other_ca_file = write_ca(other_ca, certs / "other-ca.pem")
    client_table = f"""
[admin.client]
ca_file = "{ca_file}"
cert_file = "{cli_cert}"
key_file = "{cli_key}"
"""
    runner = RunnerProcess(
        tmp_path,
        admin_token=TOKEN,
        admin_host="0.0.0.0",
        admin_ssl=client_ssl(ca, cli_leaf),
        extra_toml=f"""
[admin.tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca_file}"
{client_table}""",
    )
    trusted = f'ca_file = "{ca_file}"\ncert_file'
    untrusting = variant(
        runner.config, "other-ca.toml", trusted, f'ca_file = "{other_ca_file}"\ncert_file'
    )
    certless = variant(
        runner.config, "no-cert.toml", f'cert_file = "{cli_cert}"\nkey_file = "{cli_key}"\n', ""
    )
    await runner.start()
    try:
        code, out, err = await run_cli(runner.config, "status", "--json")
        assert code == 0, err
        state = orjson.loads(out)
        assert state["ready"] is True
        assert "admin" in state["security"]["tls"]
        assert TOKEN not in out + err

        code, out, err = await run_cli(untrusting, "status", "--json")
        assert code == 3
        assert "certificate is not trusted" in err
        assert "[admin.client] ca_file" in err
        assert "Traceback" not in err + out

        code, out, err = await run_cli(certless, "status")
        assert code == 2
        assert "requires a client certificate" in err
        assert "Traceback" not in err + out

        code, out, err = await run_cli(runner.config, "drain", "--deadline", "5")
        assert code == 0, err
        assert "drained: the Runner has stopped" in out
        assert runner.proc is not None
        assert await asyncio.to_thread(runner.proc.wait, 60) == 0
    finally:
        runner.stop()


def test_admin_url_follows_tls_and_the_bind() -> None:
    """A wildcard bind is reached on 127.0.0.1, https follows [admin.tls], `url` overrides."""
    plain = parse_config({"admin": {"listen": "0.0.0.0:9090"}}, environ={})
    assert base_url(plain) == "http://127.0.0.1:9090"
    tls = {"cert_file": "/etc/tls/admin.pem"}
    secure = parse_config({"admin": {"listen": "10.0.0.5:9443", "tls": tls}}, environ={})
    assert base_url(secure) == "https://10.0.0.5:9443"
    named = parse_config(
        {"admin": {"tls": tls, "client": {"url": "https://runner-1.bank.internal:9443/"}}},
        environ={},
    )
    assert base_url(named) == "https://runner-1.bank.internal:9443"
    with pytest.raises(ConfigError, match=r"admin\.client\.url"):
        parse_config({"admin": {"client": {"url": "https://x:1/admin"}}}, environ={})
