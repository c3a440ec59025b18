"""Property-based tests: the walker never raises and never changes structure on arbitrary JSON."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.redact.mirror import SessionMirror
from runner.redact.payloads import Collector
from runner.redact.rrweb import Walker
from runner.redact.rules import CompiledPolicy
from runner.redact.tokens import mask
from tests.redact.conftest import Redact
from tests.redact.support import shape

_REMOVED_KEYS = {"authorization", "cookie", "set-cookie", "proxy-authorization"}
_keys = st.text(max_size=8).filter(lambda k: k.lower() not in _REMOVED_KEYS)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(
        [
            "4111 1111 1111 1111",
            "priya@example.com",
            "https://a.b/c?email=x@y.co",
            '{"a": [1, "x@y.co"]}',
            "9876543210",
            "ABCPE1234F",
        ]
    )
)
json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=25,
)
_rrweb_keys = st.sampled_from(
    [
        "source",
        "node",
        "text",
        "id",
        "adds",
        "texts",
        "attributes",
        "removes",
        "href",
        "payload",
        "plugin",
        "tag",
        "commands",
        "childNodes",
        "tagName",
        "textContent",
        "type",
        "parentId",
    ]
)
_rrweb_dicts = st.recursive(
    _scalars | st.integers(min_value=0, max_value=15),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_rrweb_keys | _keys, children, max_size=6)
    ),
    max_leaves=30,
)
rrweb_like = st.fixed_dictionaries(
    {"type": st.integers(min_value=0, max_value=7), "data": _rrweb_dicts},
    optional={"timestamp": st.integers(min_value=0, max_value=2**45)},
)
events_strategy = st.lists(rrweb_like | json_values, max_size=6)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=events_strategy)
def test_walker_never_raises_and_keeps_structure(events: list[Any], redact: Redact) -> None:
    """Arbitrary JSON, shaped like rrweb or not, redacts without error to the same structure."""
    for mode in ("mask_all", "detect"):
        out, outcome = redact(events, text=mode, mask_all_inputs=mode == "mask_all")
        assert outcome.kept == len(events)
        assert shape(out) == shape(orjson.loads(orjson.dumps(events)))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=events_strategy)
def test_pure_walk_collects_without_raising(events: list[Any], compiled: Any) -> None:
    """The walker alone (no engine) accepts any JSON and returns one flag per event."""
    policy: CompiledPolicy = compiled(text="detect")
    col = Collector(policy, 65_536)
    flags = Walker(col, SessionMirror(1000)).collect(orjson.loads(orjson.dumps(events)))
    assert len(flags) == len(events)
    col.finalize()


@given(st.text())
def test_mask_keeps_the_browser_length_and_whitespace(text: str) -> None:
    """Masked text has the same UTF-16 length as the original and whitespace where it was."""
    masked = mask(text)
    assert len(masked.encode("utf-16-le", "surrogatepass")) == len(
        text.encode("utf-16-le", "surrogatepass")
    )
    assert set(masked) <= {"*"} | {c for c in text if c.isspace()}
