"""A bounded per-session mirror of the recorded DOM, so later events can be judged by their element.

An rrweb Input event carries only a node id and the typed text. Whether that
text is a password, a card number or a name depends on the element it went
into, which was described by an earlier FullSnapshot or Mutation event,
possibly in an earlier batch. The mirror keeps, per node id: the parent, and
for elements the tag, input type, name, id, autocomplete, classes and whether
the element itself matched a block or mask selector. Pure code, no I/O.

Memory is bounded twice: a session whose mirror grows past its cap starts
over (unknown nodes are then treated as sensitive), and a worker-wide node
budget evicts the least recently used sessions.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

Flags = tuple[bool, bool]
"""(blocked, masked) of one element under a policy."""

MAX_ANCESTRY = 512
"""Ancestors walked when asking whether a node sits under a blocked element."""


@dataclass(slots=True)
class Element:
    """What the mirror remembers of one element."""

    parent: int
    tag: str
    input_type: str
    name: str
    elem_id: str
    autocomplete: str
    classes: str
    extra: tuple[tuple[str, str], ...]
    self_blocked: bool
    self_masked: bool

    def attrs(self) -> dict[str, str]:
        """The remembered attributes, as a selector matcher wants them."""
        out = dict(self.extra)
        if self.classes:
            out["class"] = self.classes
        if self.elem_id:
            out["id"] = self.elem_id
        if self.name:
            out["name"] = self.name
        if self.input_type:
            out["type"] = self.input_type
        if self.autocomplete:
            out["autocomplete"] = self.autocomplete
        return out


class NodeFlags(NamedTuple):
    """What an event touching a node needs to know about it (a tuple: cheap to make)."""

    known: bool
    blocked: bool
    masked: bool
    element: Element | None


UNKNOWN = NodeFlags(known=False, blocked=False, masked=False, element=None)


class SessionMirror:
    """The DOM of one recorded session, as far as redaction needs it."""

    __slots__ = ("_elements", "_flagged", "_max_nodes", "_text_parent", "overflows", "selectors")

    def __init__(self, max_nodes: int) -> None:
        self._elements: dict[int, Element] = {}
        self._text_parent: dict[int, int] = {}
        self._max_nodes = max_nodes
        self._flagged = 0
        """Elements ever added with a block or mask flag; while 0 no ancestry walk is needed."""
        self.overflows = 0
        self.selectors: object = None
        """The block and mask selectors the elements' flags were judged by (see `rejudge`)."""

    @property
    def size(self) -> int:
        """Nodes held."""
        return len(self._elements) + len(self._text_parent)

    def reset(self) -> None:
        """Forget everything (a FullSnapshot describes the whole document again)."""
        self._elements.clear()
        self._text_parent.clear()
        self._flagged = 0

    def _room(self) -> None:
        if self.size >= self._max_nodes:
            self.overflows += 1
            self.reset()

    def add_element(self, node_id: int, element: Element) -> None:
        """Remember an element."""
        texts = self._text_parent
        if len(self._elements) + len(texts) >= self._max_nodes:
            self._room()
        if texts:
            texts.pop(node_id, None)
        self._elements[node_id] = element
        if element.self_blocked or element.self_masked:
            self._flagged += 1

    def add_text(self, node_id: int, parent: int) -> None:
        """Remember a text-like node (text, comment, CDATA) under its parent element."""
        elements = self._elements
        if len(elements) + len(self._text_parent) >= self._max_nodes:
            self._room()
        elements.pop(node_id, None)
        self._text_parent[node_id] = parent

    def rejudge(self, selectors: object, judge: Callable[[str, dict[str, str]], Flags]) -> None:
        """Judge every remembered element again when the policy's selectors changed, so a
        selector added mid-session covers elements recorded before it (by tag, id, class,
        name, type, autocomplete and the attributes the old selectors kept)."""
        if self.selectors == selectors:
            return
        if self.selectors is not None:
            flagged = 0
            for el in self._elements.values():
                el.self_blocked, el.self_masked = judge(el.tag, el.attrs())
                flagged += el.self_blocked or el.self_masked
            self._flagged = flagged
        self.selectors = selectors

    def mark_flagged(self) -> None:
        """An element's flags changed in place (an attribute mutation): walk ancestries again."""
        self._flagged += 1

    def remove(self, node_id: int) -> None:
        """Forget a removed node (its descendants become unreachable orphans until a reset)."""
        self._elements.pop(node_id, None)
        self._text_parent.pop(node_id, None)

    def element(self, node_id: int) -> Element | None:
        """The element with this id, if known."""
        return self._elements.get(node_id)

    def parent_of_text(self, node_id: int) -> int | None:
        """The parent element id of a text node, if known."""
        return self._text_parent.get(node_id)

    def flags(self, node_id: int) -> NodeFlags:
        """Known? Under a blocked or masked element? Works for elements and text nodes."""
        element = self._elements.get(node_id)
        current: int | None = node_id
        if element is None:
            parent = self._text_parent.get(node_id)
            if parent is None:
                return UNKNOWN
            current = parent
        if not self._flagged:
            return NodeFlags(True, False, False, element)
        blocked = masked = False
        for _ in range(MAX_ANCESTRY):
            if current is None:
                break
            el = self._elements.get(current)
            if el is None:
                break
            blocked = blocked or el.self_blocked
            masked = masked or el.self_masked
            if blocked:
                break
            current = el.parent if el.parent >= 0 else None
        return NodeFlags(True, blocked, masked, element)

    def parent_flags(self, parent_id: int) -> tuple[bool, bool, Element | None]:
        """(blocked, masked, element) for a parent that new nodes are being added under."""
        flags = self.flags(parent_id)
        return flags.blocked, flags.masked, flags.element


class MirrorStore:
    """All session mirrors of one worker, bounded by a node budget (least recently used go)."""

    def __init__(self, session_nodes: int, worker_nodes: int) -> None:
        self._sessions: OrderedDict[tuple[str, str], SessionMirror] = OrderedDict()
        self._session_nodes = session_nodes
        self._worker_nodes = worker_nodes
        self._nodes = 0
        """Nodes held across sessions, kept up to date by `trim` and `drop`."""
        self.evictions = 0

    def get(self, tenant: str, session_id: str) -> SessionMirror:
        """The session's mirror, created on first use and marked recently used."""
        key = (tenant, session_id)
        mirror = self._sessions.get(key)
        if mirror is None:
            mirror = SessionMirror(self._session_nodes)
            self._sessions[key] = mirror
        else:
            self._sessions.move_to_end(key)
        return mirror

    def drop(self, tenant: str, session_id: str) -> bool:
        """Free a session's mirror (the session ended); True if there was one."""
        mirror = self._sessions.pop((tenant, session_id), None)
        if mirror is None:
            return False
        self._nodes -= mirror.size
        return True

    def trim(self, changed: SessionMirror | None = None, size_before: int = 0) -> int:
        """Evict least recently used sessions until the node budget holds; returns evictions.

        `changed` is the mirror a batch just walked and `size_before` its size before: the
        running total is updated by the difference (without them it is recounted), so a
        batch costs the same however many sessions the worker holds.
        """
        if changed is None:
            self._nodes = sum(m.size for m in self._sessions.values())
        else:
            self._nodes += changed.size - size_before
        evicted = 0
        while self._nodes > self._worker_nodes and len(self._sessions) > 1:
            _, mirror = self._sessions.popitem(last=False)
            self._nodes -= mirror.size
            evicted += 1
        self.evictions += evicted
        return evicted

    @property
    def sessions(self) -> int:
        """Sessions held."""
        return len(self._sessions)

    @property
    def nodes(self) -> int:
        """Nodes held across sessions (recounted)."""
        return sum(m.size for m in self._sessions.values())
