"""The facade ingest calls, with real worker processes: lifecycle, stickiness, bounds, logs."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from runner.policy.model import PiiPolicy, TenantPolicy
from runner.redact import RedactError, Redactor, RedactRequest, RedactSettings, RedactStartupError
from runner.redact.keys import load_key
from runner.redact.vault import SqliteVault
from tests.redact.leakgen import leaked, plant
from tests.redact.support import Dom, egress_only_card, input_event
from tests.support import until

DETECT_INPUTS = TenantPolicy(pii=PiiPolicy(text="detect", mask_all_inputs=False))


async def test_end_to_end_in_worker_processes_without_pii_or_keys_in_logs(tmp_path: Path) -> None:
    """Two worker processes redact, keep each session's DOM mirror across batches, free it on
    end_session, and nothing planted (nor any key) reaches the logs."""
    events, planted = plant([], seed=3)
    with capture_logs() as logs:
        redactor = Redactor(RedactSettings(workers=2), tmp_path)
        await redactor.start()
        try:
            strict = await redactor.redact(
                RedactRequest("acme", "web", "s1", TenantPolicy(), events)
            )
            assert leaked(strict.events_json, planted) == []
            assert strict.kept == len(events)
            detect = await redactor.redact(
                RedactRequest("acme", "web", "s1", DETECT_INPUTS, events)
            )
            assert detect.entities["EMAIL_ADDRESS"] > 0
            frame_json = orjson.dumps({"type": "batch", "seq": 1, "events": events})
            framed = await redactor.redact(
                RedactRequest("acme", "web", "s1", DETECT_INPUTS, events, frame_json=frame_json)
            )
            assert framed.events_json == detect.events_json

            dom = Dom()
            pwd = dom.el("input", {"type": "password"})
            note = dom.el("input", {"type": "text", "name": "note"})
            for session in ("a", "b", "c"):
                await redactor.redact(
                    RedactRequest("acme", "web", session, DETECT_INPUTS, [dom.snapshot(pwd, note)])
                )
                later = await redactor.redact(
                    RedactRequest(
                        "acme",
                        "web",
                        session,
                        DETECT_INPUTS,
                        [input_event(pwd["id"], "hunter2"), input_event(note["id"], "hello")],
                    )
                )
                typed = [e["data"]["text"] for e in orjson.loads(later.events_json)]
                assert typed == ["*******", "hello"]
            redactor.end_session("acme", "a")
            after_end = await redactor.redact(
                RedactRequest("acme", "web", "a", DETECT_INPUTS, [input_event(note["id"], "hello")])
            )
            assert orjson.loads(after_end.events_json)[0]["data"]["text"] == "*****"

            card = egress_only_card()
            hit = await redactor.redact(
                RedactRequest(
                    "acme",
                    "web",
                    "s9",
                    DETECT_INPUTS,
                    [dom.snapshot(dom.el("p", {}, dom.text(card)))],
                )
            )
            assert hit.egress_hits == 1
            assert card.encode() not in hit.events_json
            assert redactor.stats.batches == 11
            assert redactor.stats.failures == 0
            assert redactor.stats.egress_hits >= 1
            for junk in ({"type": 5, "data": {"payload": {1, 2}}}, {"type": 5, "data": lambda: 0}):
                with pytest.raises(RedactError) as refused:
                    await redactor.redact(
                        RedactRequest("acme", "web", "s1", TenantPolicy(), [junk])
                    )
                assert not refused.value.retriable
            odd = TenantPolicy(pii=PiiPolicy(entities=("EMAIL_ADDRESS", "NOT_AN_ENTITY")))
            await redactor.redact(RedactRequest("acme", "web", "s1", odd, [dom.snapshot()]))
            engine_stats = await redactor.engine_stats()
            assert len(engine_stats) == 2
            assert sum(s["calls"] for s in engine_stats) > 0
        finally:
            await redactor.stop()
    names = {entry["event"] for entry in logs}
    assert {"pii.started", "pii.key_generated", "pii.egress_hit", "pii.stopped"} <= names
    [warning] = [e for e in logs if e["event"] == "pii.policy_warning"]
    assert warning["unknown_entities"] == ("NOT_AN_ENTITY",)
    text = repr(logs)
    assert leaked(text, planted) == []
    assert card not in text
    for key_file in (tmp_path / "pii" / "token.key", tmp_path / "pii" / "vault.key"):
        raw = base64.b64decode(key_file.read_bytes())
        for form in (key_file.read_text().strip(), raw.hex(), repr(raw)):
            assert form not in text


async def test_busy_and_stuck_workers_give_retriable_errors_and_recover(tmp_path: Path) -> None:
    """A full worker refuses more with a retriable error; a batch past its time limit gets its
    worker killed and restarted, and the next batch works. Expired vault rows are purged."""
    settings = RedactSettings(
        workers=1,
        max_pending_per_worker=1,
        queue_timeout_s=0.2,
        batch_timeout_s=2.0,
        regex_timeout_s=30.0,
    )
    key = load_key("vault key", "UNSET_VAR", None, tmp_path / "pii" / "vault.key", True, {})
    old = SqliteVault(settings.resolved_vault_path(tmp_path), key.key)
    old.open()
    old.put_many("acme", [("<EMAIL_ADDRESS:0123456789abcdef>", "a@b.co")], int(time.time()) - 5)
    old.close()
    redactor = Redactor(settings, tmp_path)
    await redactor.start()
    try:
        await until(lambda: redactor.stats.vault_purged == 1, what="the expired row to be purged")
        dom = Dom()
        hostile = [dom.snapshot(dom.el("p", {}, dom.text("a." * 6000 + "@")))]
        policy = TenantPolicy(pii=PiiPolicy(text="detect"))
        slow = asyncio.create_task(
            redactor.redact(RedactRequest("acme", "web", "s", policy, hostile))
        )
        await until(lambda: redactor.queue_depths() == [1], what="the slow batch to be queued")
        with pytest.raises(RedactError) as busy:
            await redactor.redact(RedactRequest("acme", "web", "s", policy, [dom.snapshot()]))
        assert busy.value.retriable
        with pytest.raises(RedactError) as stuck:
            await slow
        assert stuck.value.retriable
        assert "too long" in stuck.value.reason
        ok = await redactor.redact(RedactRequest("acme", "web", "s", policy, [dom.snapshot()]))
        assert ok.kept == 1
        assert redactor.stats.failures == 2
    finally:
        await redactor.stop()


async def test_a_missing_model_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    """ner_model naming an uninstalled pipeline makes start() fail, saying what to install."""
    redactor = Redactor(RedactSettings(workers=1, ner_model="en_core_web_absent"), tmp_path)
    with pytest.raises(RedactStartupError, match="not an installed spaCy pipeline"):
        await redactor.start()
    await redactor.stop()


async def test_not_started_is_a_retriable_error(tmp_path: Path) -> None:
    """redact() before start() fails retriably instead of passing data through."""
    redactor = Redactor(RedactSettings(), tmp_path)
    with pytest.raises(RedactError) as err:
        await redactor.redact(RedactRequest("acme", "web", "s", TenantPolicy(), [{"type": 4}]))
    assert err.value.retriable
