"""Feature switches drop disabled kinds of events before redaction, with exact counts."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from runner.policy.features import AUDIO, CONSOLE, NETWORK, RECORDING, filter_events, judge
from runner.policy.model import Features
from tests.support import rrweb_batch

ALL_ON = Features(recording=True, console=True, network=True, network_bodies=True, audio=True)


def plugin(name: str, payload: Any) -> dict[str, Any]:
    return {"type": 6, "timestamp": 1, "data": {"plugin": name, "payload": payload}}


def incremental(source: int, **data: Any) -> dict[str, Any]:
    return {"type": 3, "timestamp": 1, "data": {"source": source, **data}}


def custom(tag: str) -> dict[str, Any]:
    return {"type": 5, "timestamp": 1, "data": {"tag": tag, "payload": {"x": 1}}}


def request(**extra: Any) -> dict[str, Any]:
    return {
        "url": "https://bank.example/api/transfer",
        "method": "POST",
        "status": 200,
        "requestHeaders": {"content-type": "application/json"},
        "requestBody": '{"amount": 10, "iban": "DE89370400440532013000"}',
        "responseBody": '{"ok": true}',
        **extra,
    }


def mixed_batch() -> list[dict[str, Any]]:
    """3 DOM events, 2 console (plugin + Log), 2 network, 3 audio/media, 1 console custom."""
    return [
        *rrweb_batch(3),
        plugin("rrweb/console@1", {"level": "log", "payload": ['"hi"']}),
        incremental(11, level="warn", payload=['"x"']),
        plugin("rrweb/network@1", {"requests": [request(), request()]}),
        plugin("rrweb/network@1", request()),
        plugin("traceflow/audio@1", {"chunk": "AAAA"}),
        incremental(7, type=0, id=5, currentTime=1.5),
        custom("media"),
        custom("console"),
    ]


def test_everything_on_keeps_everything() -> None:
    """With every switch on, the batch is returned as is."""
    events = mixed_batch()
    kept, dropped = filter_events(events, ALL_ON)
    assert (kept, dropped) == (events, 0)


def test_recording_off_drops_the_whole_batch() -> None:
    """recording = false drops every event and counts them."""
    result = judge(mixed_batch(), ALL_ON.model_copy(update={"recording": False}))
    assert (result.events, result.dropped, result.dropped_by_kind) == ([], 11, {RECORDING: 11})


def test_console_off_drops_console_plugin_log_and_console_custom() -> None:
    """console = false drops the console plugin, Log (source 11) and `console` Custom events."""
    result = judge(mixed_batch(), ALL_ON.model_copy(update={"console": False}))
    assert result.dropped == 3
    assert result.dropped_by_kind == {CONSOLE: 3}
    assert len(result.events) == 8


def test_network_off_drops_network_plugin_events() -> None:
    """network = false drops network plugin events only."""
    result = judge(mixed_batch(), ALL_ON.model_copy(update={"network": False}))
    assert (result.dropped, result.dropped_by_kind) == (2, {NETWORK: 2})
    assert not any(e.get("data", {}).get("plugin") == "rrweb/network@1" for e in result.events)


def test_audio_off_drops_audio_plugin_media_interaction_and_media_custom() -> None:
    """audio = false drops audio/media plugins, MediaInteraction (source 7) and `media` Custom."""
    result = judge(mixed_batch(), ALL_ON.model_copy(update={"audio": False}))
    assert (result.dropped, result.dropped_by_kind) == (3, {AUDIO: 3})


def test_network_bodies_off_keeps_events_but_removes_bodies() -> None:
    """network_bodies = false keeps network events, without request or response bodies."""
    events = mixed_batch()
    before = copy.deepcopy(events)
    result = judge(events, ALL_ON.model_copy(update={"network_bodies": False}))
    assert result.dropped == 0
    assert len(result.events) == 11
    assert result.bodies_removed == 6  # 3 requests x (requestBody, responseBody)
    text = orjson.dumps(result.events).decode()
    assert "DE89370400440532013000" not in text
    assert "requestBody" not in text
    assert "https://bank.example/api/transfer" in text  # the rest of the request stays
    assert events == before  # the input is not modified


def test_nested_and_wrapped_network_bodies_are_removed() -> None:
    """Bodies inside `data`-wrapped requests and nested request/response objects are removed."""
    wrapped = plugin("vendor/network@2", {"data": request()})
    nested = plugin(
        "rrweb/network@1",
        {"url": "u", "request": {"body": "secret-a", "headers": {}}, "response": {"body": "b"}},
    )
    result = judge([wrapped, nested], ALL_ON.model_copy(update={"network_bodies": False}))
    assert result.bodies_removed == 4
    assert "secret-a" not in orjson.dumps(result.events).decode()
    assert result.events[1]["data"]["payload"]["request"] == {"headers": {}}


def test_strict_default_counts() -> None:
    """The strict default (no bodies, no audio) drops 3 audio/media events and strips 6 bodies."""
    result = judge(mixed_batch(), Features())
    assert (result.dropped, result.dropped_by_kind, result.bodies_removed) == (3, {AUDIO: 3}, 6)
    assert len(result.events) == 8


def test_malformed_events_are_kept_for_the_next_stage() -> None:
    """Events this stage cannot classify are kept (validation and redaction judge them)."""
    odd: list[Any] = ["text", 42, {"type": 6}, {"type": 6, "data": {"plugin": 7}}, {"data": []}]
    kept, dropped = filter_events(odd, Features(console=False, network=False))
    assert (kept, dropped) == (odd, 0)
