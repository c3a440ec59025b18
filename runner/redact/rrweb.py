"""The rrweb walker: where text lives in every event type of PROTOCOL §1.

`collect` walks a batch once, in order, keeping the session's DOM mirror up
to date (FullSnapshot resets it, Mutation adds/removes/attribute changes edit
it) and gathering every text slot with what the element it belongs to says
about it. It leaves everything else alone: node ids, coordinates, timing,
CSS, canvas pixels. It never raises on junk: an event or node that does not
have the expected shape is walked as plain JSON with every string secret.

Serialised DOM nodes (snapshots, Mutation adds) are the `DomWalker`'s part
(`dom.py`), including blocked elements: their subtree's text becomes "" and
their attributes are removed, while the nodes stay so node ids and structure
are unchanged.

Pure code, no I/O.
"""

from __future__ import annotations

from typing import Any

from runner.redact.dom import BLOCK_KEEP_ATTRS, DomWalker, unknown_element
from runner.redact.mirror import UNKNOWN, NodeFlags
from runner.redact.payloads import INPUT, JUNK, SECRET, STRUCT, TEXT

FULL_SNAPSHOT = 2
INCREMENTAL = 3
META = 4
CUSTOM = 5
PLUGIN = 6
KNOWN_EVENT_TYPES = range(7)

MUTATION = 0
INPUT_SOURCE = 5
CANVAS = 9
LOG = 11
CSS_SOURCES = frozenset({8, 10, 13, 15})
"""StyleSheetRule, Font, StyleDeclaration, AdoptedStyleSheet: CSS, left untouched."""
GEOMETRY_SOURCES = frozenset({1, 2, 3, 4, 6, 7, 12, 14})
"""Pointer, scroll, viewport, media, drag, selection: numbers; stray strings are analysed."""

_EVENT_KEYS = frozenset({"type", "data", "timestamp"})
_MUTATION_KEYS = frozenset({"source", "texts", "attributes", "removes", "adds", "isAttachIframe"})


class Walker(DomWalker):
    """Walks the events of one batch of one session into a `Collector`."""

    def collect(self, events: list[Any]) -> list[bool]:
        """Walk every event; returns, per event, whether `drop_event` may remove it."""
        droppable: list[bool] = []
        for i in range(len(events)):
            self.col.event = i
            droppable.append(self._event(events, i))
        return droppable

    # ---- events -------------------------------------------------------------------------

    def _event(self, events: list[Any], i: int) -> bool:
        col = self.col
        ev = events[i]
        if not isinstance(ev, dict):
            col.json_value(events, i, JUNK)
            return True
        t = ev.get("type")
        if type(t) is not int or t not in KNOWN_EVENT_TYPES:
            col.json_value(events, i, JUNK)
            return True
        if not _EVENT_KEYS.issuperset(ev):
            for extra in ev.keys() - _EVENT_KEYS:
                col.json_value(ev, extra, STRUCT, str(extra))
        if not isinstance(ev.get("timestamp", 0), (int, float)):
            col.json_value(ev, "timestamp", JUNK)
        data = ev.get("data")
        if not isinstance(data, dict):
            if data is not None:
                col.json_value(ev, "data", JUNK)
            return True
        if t == FULL_SNAPSHOT:
            self._full_snapshot(data)
            return False
        if t == INCREMENTAL:
            return self._incremental(ev, data)
        if t == META:
            for key in data:
                if key == "href" and isinstance(data[key], str):
                    col.url(data, key, data[key], TEXT)
                else:
                    col.json_value(data, key, STRUCT, str(key))
            return False
        if t == CUSTOM:
            for key in data:
                col.json_value(
                    data,
                    key,
                    STRUCT if key == "tag" else TEXT,
                    "" if key == "payload" else str(key),
                )
            return True
        if t == PLUGIN:
            self._plugin(data)
            return True
        col.json_value(ev, "data", STRUCT)
        return True

    def _plugin(self, data: dict[str, Any]) -> None:
        name = data.get("plugin")
        name = name.lower() if isinstance(name, str) else ""
        for key in data:
            if key == "plugin" and isinstance(data[key], str):
                continue
            if key == "payload" and "console" in name:
                self.col.console(data, key)
            elif key == "payload" and "network" in name:
                self.col.network(data, key)
            else:
                self.col.json_value(data, key, TEXT, "" if key == "payload" else str(key))

    def _incremental(self, ev: dict[str, Any], data: dict[str, Any]) -> bool:
        source = data.get("source")
        if type(source) is not int:
            self.col.json_value(ev, "data", JUNK)
            return True
        if source == MUTATION:
            self._mutation(data)
            return False
        if source == INPUT_SOURCE:
            self._input(data)
        elif source == CANVAS:
            self._canvas(data)
        elif source == LOG:
            self.col.console(ev, "data")
        elif source in GEOMETRY_SOURCES:
            if not _numbers_only(data):
                self.col.json_value(ev, "data", STRUCT)
        elif source not in CSS_SOURCES:
            self.col.json_value(ev, "data", JUNK)
        return True

    # ---- DOM trees ----------------------------------------------------------------------

    def _full_snapshot(self, data: dict[str, Any]) -> None:
        self.mirror.reset()
        for key in data:
            if key == "node":
                self._tree(data, key, -1, False, False, "", register=True)
            elif key != "initialOffset":
                self.col.json_value(data, key, STRUCT, str(key))

    def _mutation(self, data: dict[str, Any]) -> None:
        col = self.col
        mirror = self.mirror
        if not _MUTATION_KEYS.issuperset(data):
            for key in data:
                if key not in _MUTATION_KEYS:
                    col.json_value(data, key, STRUCT, str(key))
        removes = data.get("removes")
        if isinstance(removes, list):
            for item in removes:
                if isinstance(item, dict) and type(item.get("id")) is int:
                    mirror.remove(item["id"])
        adds = data.get("adds")
        if isinstance(adds, list):
            for add in adds:
                if isinstance(add, dict) and type(pid := add.get("parentId")) is int:
                    self._register(add.get("node"), pid)
            for i in range(len(adds)):
                self._add(adds, i)
            self._stash.clear()
        elif adds is not None:
            col.json_value(data, "adds", JUNK)
        texts = data.get("texts")
        if isinstance(texts, list):
            for item in texts:
                self._text_change(item)
        attributes = data.get("attributes")
        if isinstance(attributes, list):
            for item in attributes:
                self._attribute_change(item)
        for key in ("texts", "attributes", "removes"):
            if data.get(key) is not None and not isinstance(data.get(key), list):
                col.json_value(data, key, JUNK)

    def _add(self, adds: list[Any], i: int) -> None:
        col = self.col
        add = adds[i]
        if not isinstance(add, dict):
            col.json_value(adds, i, JUNK)
            return
        pid = add.get("parentId")
        flags = self.mirror.flags(pid) if type(pid) is int else UNKNOWN
        parent_tag = flags.element.tag if flags.element is not None else ""
        parent = pid if type(pid) is int else -1
        for key in add:
            if key == "node":
                self._tree(
                    add, key, parent, flags.blocked, flags.masked, parent_tag, register=False
                )
            elif (value := add[key]) is not None and not isinstance(value, int):
                col.json_value(add, key, STRUCT, str(key))

    def _text_change(self, item: Any) -> None:
        if not isinstance(item, dict):
            return
        value = item.get("value")
        nid = item.get("id")
        if not isinstance(value, str):
            if value is not None:
                self.col.json_value(item, "value", JUNK)
            return
        flags = self.mirror.flags(nid) if type(nid) is int else UNKNOWN
        parent_tag = ""
        if flags.known and type(nid) is int:
            parent = self.mirror.parent_of_text(nid)
            parent_el = self.mirror.element(parent) if parent is not None else None
            parent_tag = parent_el.tag if parent_el is not None else ""
        self._text(
            item,
            "value",
            value,
            parent_tag,
            flags.blocked,
            flags.masked,
            style=parent_tag == "style",
        )

    def _attribute_change(self, item: Any) -> None:
        col = self.col
        if not isinstance(item, dict):
            return
        nid = item.get("id")
        attrs = item.get("attributes")
        if not isinstance(attrs, dict):
            if attrs is not None:
                col.json_value(item, "attributes", JUNK)
            return
        element = self.mirror.element(nid) if type(nid) is int else None
        if element is not None:
            self._update_element(element, attrs)
        flags = self.mirror.flags(nid) if type(nid) is int else UNKNOWN
        if flags.blocked:
            for name in attrs:
                if str(name).lower() not in BLOCK_KEEP_ATTRS and attrs[name] is not None:
                    attrs[name] = None
                    col.removed += 1
            return
        if element is None:
            element = unknown_element()
        self._attributes(attrs, element.tag, element, flags.masked or not flags.known, False)

    def _input(self, data: dict[str, Any]) -> None:
        col = self.col
        for key in data:
            if key not in ("source", "text", "id", "isChecked", "userTriggered"):
                col.json_value(data, key, STRUCT, str(key))
        text = data.get("text")
        if not isinstance(text, str):
            if text is not None:
                col.json_value(data, "text", JUNK)
            return
        nid = data.get("id")
        flags: NodeFlags = self.mirror.flags(nid) if type(nid) is int else UNKNOWN
        if flags.blocked:
            if text:
                data["text"] = ""
            return
        if not text:
            return
        element = flags.element
        if element is None:
            col.add(data, "text", text, SECRET)
            return
        secret, entity, context = self.field_info(element)
        if secret or flags.masked:
            kind = SECRET
        elif element.input_type in ("checkbox", "radio"):
            kind = STRUCT
        else:
            kind = INPUT
        col.add(data, "text", text, kind, context, entity)

    def _canvas(self, data: dict[str, Any]) -> None:
        commands = data.get("commands")
        if not isinstance(commands, list):
            commands = [data]
        nid = data.get("id")
        blocked = self.mirror.flags(nid).blocked if type(nid) is int else False
        for cmd in commands:
            if not isinstance(cmd, dict) or cmd.get("property") not in ("fillText", "strokeText"):
                continue
            args = cmd.get("args")
            if isinstance(args, list) and args and isinstance(args[0], str):
                if blocked:
                    args[0] = ""
                else:
                    self.col.add(args, 0, args[0], TEXT)


def _numbers_only(value: Any, depth: int = 0) -> bool:
    """True when a (small) structure holds nothing but numbers, booleans and nulls."""
    if depth > 4:
        return False
    items = value.values() if isinstance(value, dict) else value
    for v in items:
        t = type(v)
        if t is int or t is float or t is bool or v is None:
            continue
        if (t is dict or t is list) and _numbers_only(v, depth + 1):
            continue
        return False
    return True
