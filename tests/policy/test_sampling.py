"""Deterministic sampling, and live policy changes seen by real sessions on a real Runner."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from redis.asyncio import Redis

from runner.app import Runner
from runner.buffer.keys import Keys
from runner.policy.store import in_sample
from tests.conftest import ws_url
from tests.policy.conftest import MakeManager, settings
from tests.support import TENANT, Sdk, until

IDS = [f"session-{i:05d}" for i in range(10_000)]


def test_sampling_is_deterministic_per_session() -> None:
    """The same tenant and session id give the same answer every time."""
    first = [in_sample(TENANT, sid, 0.3) for sid in IDS]
    again = [in_sample(TENANT, sid, 0.3) for sid in IDS]
    assert first == again


def test_sampling_rate_is_respected() -> None:
    """About `rate` of sessions are in; 0 takes none and 1 takes all."""
    share = sum(in_sample(TENANT, sid, 0.3) for sid in IDS) / len(IDS)
    assert 0.28 <= share <= 0.32
    assert not any(in_sample(TENANT, sid, 0.0) for sid in IDS)
    assert all(in_sample(TENANT, sid, 1.0) for sid in IDS)


def test_raising_the_rate_keeps_sampled_sessions_in() -> None:
    """A session in the sample at a lower rate stays in when the rate is raised."""
    low = {sid for sid in IDS if in_sample(TENANT, sid, 0.2)}
    high = {sid for sid in IDS if in_sample(TENANT, sid, 0.5)}
    assert low <= high


def test_tenants_are_sampled_independently() -> None:
    """The same session id can be in for one tenant and out for another."""
    a = [in_sample("acme-bank", sid, 0.5) for sid in IDS[:1000]]
    b = [in_sample("other-bank", sid, 0.5) for sid in IDS[:1000]]
    assert a != b


def tenant_file(version: int, rate: float) -> str:
    return f"version = {version}\n[sampling]\nsession_rate = {rate}\n"


async def test_sessions_keep_their_sample_across_reconnects_and_see_new_policy(
    runner: Runner, redis: Redis, tmp_path: Path, make_manager: MakeManager
) -> None:
    """welcome.sampled is stable across reconnects; after a hot apply the next batch carries it."""
    folder = tmp_path / "live-policies"
    folder.mkdir()
    (folder / f"{TENANT}.toml").write_text(tenant_file(1, 0.5))
    manager = await make_manager(
        settings("", None, folder, watch_interval_s=3600), store=runner.policies
    )
    assert runner.policies.current.version == 1

    ids = [f"sticky-{i}" for i in range(12)]
    first: dict[str, bool] = {}
    for sid in ids:
        sdk = Sdk(ws_url(runner), sid)
        welcome = await sdk.connect()
        first[sid] = welcome["sampled"]
        assert welcome["policy_version"] == 1
        await sdk.close()
    assert first == {sid: in_sample(TENANT, sid, 0.5) for sid in ids}
    assert set(first.values()) == {True, False}
    for sid in ids:
        sdk = Sdk(ws_url(runner), sid)
        assert (await sdk.connect())["sampled"] == first[sid]
        await sdk.close()

    live = Sdk(ws_url(runner), next(sid for sid in ids if first[sid]))
    await live.connect()
    assert (await live.batch(1))["type"] == "ack"
    (folder / f"{TENANT}.toml").write_text(tenant_file(2, 1.0))
    manager.reload()
    await until(lambda: runner.policies.current.version == 2, what="the new policy")
    assert (await live.batch(2))["type"] == "ack"
    await live.close()

    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(Keys("tf").stream(TENANT))
    )
    mine = [f for _, f in entries if f[b"sid"] == live.session_id.encode()]
    versions = {int(f[b"seq"]): int(f[b"pv"]) for f in mine}
    assert versions == {1: 1, 2: 2}
    newcomer = Sdk(ws_url(runner), next(sid for sid in ids if not first[sid]))
    welcome = await newcomer.connect()
    assert (welcome["sampled"], welcome["policy_version"]) == (True, 2)
    await newcomer.close()
