"""Feature switches of a tenant's policy (`features` of PROTOCOL §3), applied to a batch.

Pure functions over parsed rrweb events: no I/O, no mutation of the input
(an event whose network bodies are removed is copied along the changed path).
Ingest runs this before redaction, so a disabled kind never reaches the PII
engine, the buffer or the cloud.

| switch                  | dropped when off                                                |
|-------------------------|-----------------------------------------------------------------|
| `recording`             | every event                                                     |
| `console`               | Plugin events whose `data.plugin` names console (`rrweb/console@1`), |
|                         | Incremental source 11 (Log), Custom events tagged `console`     |
| `network`               | Plugin events whose `data.plugin` names network (`rrweb/network@1`), |
|                         | Custom events tagged `network`                                   |
| `network_bodies`        | (events kept) `requestBody`, `responseBody`, `body` of each request, |
|                         | and `body` of nested `request` / `response` objects             |
| `audio`                 | Plugin events whose `data.plugin` names audio or media,         |
|                         | Incremental source 7 (MediaInteraction), Custom events tagged    |
|                         | `audio` or `media`                                               |

Plugins are matched by substring of the lower-cased name, as the PII engine
matches them, so a `vendor/network@2` plugin is network to both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from runner.policy.model import Features

PLUGIN: Final = 6
CUSTOM: Final = 5
INCREMENTAL: Final = 3
SOURCE_MEDIA_INTERACTION: Final = 7
SOURCE_LOG: Final = 11

RECORDING: Final = "recording"
CONSOLE: Final = "console"
NETWORK: Final = "network"
AUDIO: Final = "audio"

BODY_KEYS: Final = ("requestBody", "responseBody", "body")
NESTED_MESSAGES: Final = ("request", "response")
CUSTOM_TAGS: Final = {"console": CONSOLE, "network": NETWORK, "audio": AUDIO, "media": AUDIO}


@dataclass(slots=True)
class FeatureResult:
    """The events to keep, and what was taken out (for counters)."""

    events: list[Any]
    dropped: int = 0
    dropped_by_kind: dict[str, int] = field(default_factory=dict)
    bodies_removed: int = 0


def kind_of(event: Any) -> str | None:
    """The switchable kind of one event (`console`, `network`, `audio`), or None."""
    if not isinstance(event, dict):
        return None
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    t = event.get("type")
    if t == PLUGIN:
        name = data.get("plugin")
        name = name.lower() if isinstance(name, str) else ""
        if "console" in name:
            return CONSOLE
        if "network" in name:
            return NETWORK
        if "audio" in name or "media" in name:
            return AUDIO
        return None
    if t == INCREMENTAL:
        source = data.get("source")
        if source == SOURCE_LOG:
            return CONSOLE
        if source == SOURCE_MEDIA_INTERACTION:
            return AUDIO
        return None
    if t == CUSTOM:
        tag = data.get("tag")
        return CUSTOM_TAGS.get(tag.lower()) if isinstance(tag, str) else None
    return None


def _enabled(kind: str, features: Features) -> bool:
    if kind == CONSOLE:
        return features.console
    if kind == NETWORK:
        return features.network
    return features.audio


def _strip_request(request: Any) -> tuple[Any, int]:
    """A request object without its bodies (a copy when something was removed)."""
    if not isinstance(request, dict):
        return request, 0
    removed = sum(1 for k in BODY_KEYS if k in request)
    nested = {
        k: request[k]
        for k in NESTED_MESSAGES
        if isinstance(request.get(k), dict) and "body" in request[k]
    }
    if not removed and not nested:
        return request, 0
    copy = {k: v for k, v in request.items() if k not in BODY_KEYS}
    for k, message in nested.items():
        copy[k] = {mk: mv for mk, mv in message.items() if mk != "body"}
    return copy, removed + len(nested)


def _strip_payload(payload: Any) -> tuple[Any, int]:
    """The network payload (`{"requests": [...]}`, `{"data": {...}}` or one request)."""
    if isinstance(payload, dict) and isinstance(payload.get("requests"), list):
        stripped = [_strip_request(req) for req in payload["requests"]]
        removed = sum(n for _, n in stripped)
        if not removed:
            return payload, 0
        return {**payload, "requests": [req for req, _ in stripped]}, removed
    if isinstance(payload, dict) and isinstance(payload.get("data"), dict):
        inner, removed = _strip_request(payload["data"])
        return ({**payload, "data": inner}, removed) if removed else (payload, 0)
    return _strip_request(payload)


def strip_bodies(event: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A network event without request/response bodies; the count of bodies removed."""
    data = event["data"]
    if "payload" not in data:
        return event, 0
    payload, removed = _strip_payload(data["payload"])
    if not removed:
        return event, 0
    return {**event, "data": {**data, "payload": payload}}, removed


def judge(events: Sequence[Any], features: Features) -> FeatureResult:
    """Apply the switches to a batch; the input is not modified."""
    if not features.recording:
        n = len(events)
        return FeatureResult(events=[], dropped=n, dropped_by_kind={RECORDING: n} if n else {})
    result = FeatureResult(events=[])
    for event in events:
        kind = kind_of(event)
        if kind is None:
            result.events.append(event)
        elif not _enabled(kind, features):
            result.dropped += 1
            result.dropped_by_kind[kind] = result.dropped_by_kind.get(kind, 0) + 1
        elif kind == NETWORK and not features.network_bodies:
            kept, removed = strip_bodies(event)
            result.bodies_removed += removed
            result.events.append(kept)
        else:
            result.events.append(event)
    return result


def filter_events(events: list[Any], features: Features) -> tuple[list[Any], int]:
    """(events to keep, number dropped): the batch with disabled kinds removed."""
    result = judge(events, features)
    return result.events, result.dropped
