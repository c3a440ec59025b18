"""Encryption at rest of dead letters and local chunks: sealed on disk and in S3, key rotation."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import stat
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import typer
import zstandard
from structlog.testing import capture_logs
from typer.testing import CliRunner, Result

from runner.buffer.redis_streams import StreamBuffer
from runner.config import Config, parse_config
from runner.errors import ConfigError, StartupError
from runner.forward.cli import chunks_app, dlq_app
from runner.forward.sealed import DEV_KEYS_FILE, is_metadata
from runner.forward.settings import DlqSettings
from runner.forward.storage import open_store
from runner.policy.model import Policy, TenantPolicy
from runner.policy.store import PolicyStore
from runner.security.atrest import Sealer
from runner.security.settings import AtRestSettings
from tests.forward.conftest import (
    AT_REST_ENV,
    BUCKET,
    S3_ENV,
    MakeForwarder,
    fast_cloud,
    s3_dlq,
)
from tests.forward.support import FakeCloud, Reply, WeedS3, dev_keys, write_batches
from tests.support import TENANT

MARKER = "PLAINTEXT-MARKER-7f3a"
LOCAL_TENANT = "local-bank"
FORWARD_OFF = PolicyStore(Policy(version=2, tenants={LOCAL_TENANT: TenantPolicy(forward=False)}))


def keyring(*entries: tuple[str, bytes]) -> str:
    return ",".join(f"{kid}:{key.hex()}" for kid, key in entries)


async def invoke(app: typer.Typer, args: list[str], env: Mapping[str, str]) -> Result:
    """Run a `runner dlq|chunks …` command in a thread (it runs its own loop), as an operator."""
    return await asyncio.to_thread(CliRunner().invoke, app, args, env=dict(env))


@dataclass
class Place:
    """Where the store lives (a folder under data_dir, or an S3 bucket); reads it raw."""

    dlq: DlqSettings
    data_dir: Path
    toml: Path
    weed: WeedS3 | None = None
    prefix: str = ""

    def env(self, keys: str) -> dict[str, str]:
        """The environment of the Runner and of the CLI: S3 credentials, and this keyring."""
        base = {k: v for k, v in S3_ENV.items() if k != AT_REST_ENV} if self.weed else {}
        return {**base, AT_REST_ENV: keys}

    def raw(self, key: str) -> bytes:
        """The bytes exactly as stored (what someone with access to the disk or bucket sees)."""
        if self.weed is None:
            return self.data_dir.joinpath(*key.split("/")).read_bytes()
        return self.weed.client().get_object(BUCKET, f"{self.prefix}/{key}").read()

    def keys(self, under: str) -> list[str]:
        if self.weed is None:
            root = self.data_dir / under
            return sorted(p.relative_to(self.data_dir).as_posix() for p in root.rglob("*.*"))
        found = self.weed.client().list_objects(
            BUCKET, prefix=f"{self.prefix}/{under}/", recursive=True
        )
        return sorted((o.object_name or "")[len(self.prefix) + 1 :] for o in found)


@pytest.fixture(params=["folder", "s3"])
def place(
    request: pytest.FixtureRequest, config: Config, cloud: FakeCloud, tmp_path: Path
) -> Place:
    """The dead-letter store under test, with a runner.toml for the CLI that points at it."""
    toml = tmp_path / "runner.toml"
    text = (
        f'[runner]\nid = "{config.runner.id}"\ndata_dir = "{config.runner.data_dir}"\n'
        f'[buffer]\nredis_url = "{config.buffer.redis_url}"\n'
        f'[cloud]\nendpoint = "{cloud.url}"\n'
    )
    if request.param == "folder":
        toml.write_text(text)
        return Place(DlqSettings(), config.runner.data_dir, toml)
    weed: WeedS3 = request.getfixturevalue("weed")
    prefix: str = request.getfixturevalue("s3_prefix")
    dlq = s3_dlq(weed.endpoint, prefix)
    toml.write_text(
        text + f'[dlq]\nurl = "{dlq.url}"\ns3_endpoint = "{weed.endpoint}"\n'
        'access_key_env = "TEST_S3_ACCESS"\nsecret_key_env = "TEST_S3_SECRET"\n'
    )
    return Place(dlq, config.runner.data_dir, toml, weed, prefix)


async def test_objects_are_sealed_and_survive_key_rotation(
    buffer: StreamBuffer, cloud: FakeCloud, make_forwarder: MakeForwarder, place: Place
) -> None:
    """Objects hold no plaintext, read after rotation, and fail cleanly once their key goes."""
    k1, k2 = ("k1", os.urandom(32)), ("k2", os.urandom(32))
    cloud.default = Reply(400)
    cli = place.toml

    async def write_round(label: str, keys: str) -> None:
        await write_batches(buffer, {f"s-{label}": range(1, 2)}, marker=MARKER)
        await write_batches(
            buffer, {f"s-{label}-local": range(1, 2)}, tenant=LOCAL_TENANT, marker=MARKER
        )
        forwarder = await make_forwarder(
            cloud=fast_cloud(cloud), dlq=place.dlq, policies=FORWARD_OFF, environ=place.env(keys)
        )
        assert await forwarder.run_until_empty(20) == 0
        await forwarder.stop()

    await write_round("old", keyring(k1))
    await write_round("new", keyring(k2, k1))
    old_letter, new_letter = cloud.arrived
    payloads = [k for k in place.keys("dlq") if k.endswith(".zst")]
    chunks = place.keys("chunks")
    assert len(payloads) == len(chunks) == 2
    assert not (place.data_dir / DEV_KEYS_FILE).exists(), "a configured key: no dev key"

    for key in payloads + chunks:
        raw = place.raw(key)
        assert raw.startswith(b"TFE1")
        assert MARKER.encode() not in raw
        assert b"s-old" not in raw
        assert b"s-new" not in raw
        assert Sealer.key_id(raw) == ("k1" if "old" in key or old_letter in key else "k2")
    meta = orjson.loads(place.raw(f"dlq/{TENANT}/{old_letter}.json"))
    assert meta["reason"] == "rejected", "metadata holds no payload and stays clear"

    both = place.env(keyring(k2, k1))
    for letter in (old_letter, new_letter):
        shown = await invoke(dlq_app, ["show", letter, "--payload", "-c", str(cli)], both)
        assert shown.exit_code == 0, shown.output
        assert MARKER in shown.output
    for key in chunks:
        cat = await invoke(chunks_app, ["cat", key, "-c", str(cli)], both)
        assert cat.exit_code == 0, cat.output
        assert MARKER in cat.output

    retired = place.env(keyring(k2))
    listed = await invoke(dlq_app, ["list", "-c", str(cli)], retired)
    assert listed.output.strip().endswith("2 dead letter(s)"), "listing needs no key"
    gone = await invoke(dlq_app, ["show", old_letter, "--payload", "-c", str(cli)], retired)
    assert gone.exit_code == 6
    assert "key 'k1' is not in the keyring" in gone.output
    assert "Traceback" not in gone.output
    assert MARKER not in gone.output
    new_shown = await invoke(dlq_app, ["show", new_letter, "--payload", "-c", str(cli)], retired)
    assert MARKER in new_shown.output
    old_chunk, new_chunk = sorted(chunks, key=lambda k: "new" in k)
    assert (await invoke(chunks_app, ["cat", old_chunk, "-c", str(cli)], retired)).exit_code == 6
    assert (await invoke(chunks_app, ["cat", new_chunk, "-c", str(cli)], retired)).exit_code == 0

    impostor = place.env(keyring(("k1", os.urandom(32)), k2))
    wrong = await invoke(dlq_app, ["show", old_letter, "--payload", "-c", str(cli)], impostor)
    assert wrong.exit_code == 6
    assert "does not open under key 'k1'" in wrong.output


async def test_replay_opens_letters_and_skips_those_whose_key_is_gone(
    buffer: StreamBuffer, cloud: FakeCloud, make_forwarder: MakeForwarder, place: Place
) -> None:
    """`dlq replay --all` re-queues what opens (the forwarder delivers it), reports the rest."""
    k1, k2 = ("k1", os.urandom(32)), ("k2", os.urandom(32))
    cloud.default = Reply(400)
    first = await make_forwarder(
        cloud=fast_cloud(cloud), dlq=place.dlq, environ=place.env(keyring(k1))
    )
    await write_batches(buffer, {"s-r1": range(1, 2)}, marker=MARKER)
    assert await first.run_until_empty(20) == 0
    await first.stop()
    second = await make_forwarder(
        cloud=fast_cloud(cloud), dlq=place.dlq, environ=place.env(keyring(k2, k1))
    )
    await write_batches(buffer, {"s-r2": range(1, 2)}, marker=MARKER)
    assert await second.run_until_empty(20) == 0
    old_letter, new_letter = cloud.arrived
    cloud.default = Reply(200)

    args = ["replay", "--all", "-c", str(place.toml)]
    partial = await invoke(dlq_app, args, place.env(keyring(k2)))
    assert partial.exit_code == 6, partial.output
    assert "1 dead letter(s) re-queued" in partial.output
    assert "not in the keyring" in partial.output
    assert await second.run_until_empty(20) == 0
    assert list(cloud.accepted) == [new_letter]
    assert MARKER in orjson.dumps(cloud.accepted[new_letter].lines).decode()

    rest = await invoke(dlq_app, args, place.env(keyring(k2, k1)))
    assert rest.exit_code == 0, rest.output
    assert await second.run_until_empty(20) == 0
    assert list(cloud.accepted) == [new_letter, old_letter]


async def test_development_key_is_generated_once_and_never_logged(
    buffer: StreamBuffer, config: Config, make_forwarder: MakeForwarder, tmp_path: Path
) -> None:
    """With no key the Runner makes a 0600 dev keyring, never logs it; the CLI reads with it."""
    await write_batches(buffer, {"s-dev": range(1, 3)}, marker=MARKER)
    with capture_logs() as logs:
        forwarder = await make_forwarder()
        assert await forwarder.run_until_empty(10) == 0
    key_file = config.runner.data_dir / DEV_KEYS_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    [warning] = [e for e in logs if e["event"] == "at_rest.key_generated"]
    assert warning["path"] == str(key_file)
    text = repr(logs)
    secret = dev_keys(config.runner.data_dir).strip().splitlines()[-1].split(":", 1)[1]
    assert secret not in text
    assert base64.b64decode(secret).hex() not in text
    assert MARKER not in text

    with capture_logs() as again:
        await make_forwarder()
    assert [e["source"] for e in again if e["event"] == "at_rest.key_loaded"] == ["dev-file"]

    toml = tmp_path / "runner.toml"
    toml.write_text(f'[runner]\ndata_dir = "{config.runner.data_dir}"\n')
    keys = _listed(await invoke(chunks_app, ["list", "-c", str(toml)], {}))
    cat = await invoke(chunks_app, ["cat", keys[0], "-c", str(toml)], {})
    assert cat.exit_code == 0, cat.output
    assert MARKER in cat.output


def _listed(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [line.split()[0] for line in result.output.splitlines() if line.startswith("chunks/")]


async def test_no_key_and_no_dev_key_stops_start_up_and_the_cli(
    config: Config, make_forwarder: MakeForwarder, tmp_path: Path
) -> None:
    """With generate_dev_key off and no key the forwarder refuses to start; the CLI exits 2."""
    strict = DlqSettings(at_rest=AtRestSettings(generate_dev_key=False))
    with pytest.raises(StartupError, match=r"\[dlq.at_rest\].*TRACEFLOW_AT_REST_KEYS"):
        await make_forwarder(dlq=strict)
    assert not (config.runner.data_dir / DEV_KEYS_FILE).exists()
    toml = tmp_path / "runner.toml"
    toml.write_text(f'[runner]\ndata_dir = "{tmp_path / "fresh"}"\n')
    result = await invoke(dlq_app, ["list", "-c", str(toml)], {})
    assert result.exit_code == 2
    assert "start the Runner once" in result.output
    assert not (tmp_path / "fresh" / DEV_KEYS_FILE).exists(), "the CLI never creates a key"


async def test_moved_and_unsealed_objects_are_refused(tmp_path: Path) -> None:
    """A sealed object moved to another name does not open; unsealed ones need read_unsealed."""
    keys = {AT_REST_ENV: "k1:" + os.urandom(32).hex()}
    data_dir = tmp_path / "data"
    name = f"chunks/{TENANT}/2025-01-01/s-1/{'c' * 32}.ndjson.zst"
    chunk = zstandard.ZstdCompressor().compress(f'{{"count":1}}\n{{"t":"{MARKER}"}}\n'.encode())
    with ThreadPoolExecutor(1) as io:
        store = open_store(DlqSettings(), data_dir, io, keys, operator=True)
        await store.put(name, chunk, "application/zstd")
        assert await store.get(name) == chunk
    moved = name.replace(TENANT, "other-bank")
    (data_dir / moved).parent.mkdir(parents=True)
    shutil.copy(data_dir / name, data_dir / moved)
    legacy = f"chunks/{TENANT}/2024-01-01/s-0/{'d' * 32}.ndjson.zst"
    (data_dir / legacy).parent.mkdir(parents=True)
    (data_dir / legacy).write_bytes(chunk)

    toml = tmp_path / "runner.toml"
    toml.write_text(f'[runner]\ndata_dir = "{data_dir}"\n')
    moved_cat = await invoke(chunks_app, ["cat", moved, "-c", str(toml)], keys)
    assert moved_cat.exit_code == 6
    assert "opened under another name" in moved_cat.output
    refused = await invoke(chunks_app, ["cat", legacy, "-c", str(toml)], keys)
    assert refused.exit_code == 6
    assert "read_unsealed" in refused.output
    toml.write_text(toml.read_text() + "[dlq.at_rest]\nread_unsealed = true\n")
    allowed = await invoke(chunks_app, ["cat", legacy, "-c", str(toml)], keys)
    assert allowed.exit_code == 0, allowed.output
    assert MARKER in allowed.output
    assert (await invoke(chunks_app, ["cat", name, "-c", str(toml)], keys)).exit_code == 0


def test_at_rest_settings_live_under_dlq_and_refuse_typos() -> None:
    """`[dlq.at_rest]` is validated like every section, and its keys_env is a secret, not config."""
    cfg = parse_config(
        {"dlq": {"at_rest": {"keys_env": "RUNNER_AT_REST_KEYS", "read_unsealed": True}}},
        environ={"RUNNER_AT_REST_KEYS": "k1:" + "00" * 32},
    )
    assert cfg.dlq.at_rest.keys_env == "RUNNER_AT_REST_KEYS"
    assert cfg.dlq.at_rest.read_unsealed
    assert cfg.dlq.at_rest.generate_dev_key
    with pytest.raises(ConfigError, match=r"at_rest\.keys_fle: unknown key"):
        parse_config({"dlq": {"at_rest": {"keys_fle": "x"}}}, environ={})


def test_only_metadata_stays_clear() -> None:
    """Dead-letter metadata and spill manifests stay clear; every other object is sealed."""
    assert is_metadata(f"dlq/{TENANT}/abc.json")
    assert is_metadata("spills/runner-1-20250101T000000000Z.json")
    assert not is_metadata(f"dlq/{TENANT}/abc.zst")
    assert not is_metadata(f"chunks/{TENANT}/2025-01-01/s/abc.ndjson.zst")
    assert not is_metadata(f"chunks/{TENANT}/2025-01-01/s/abc.json"), "fail closed elsewhere"
