"""DOM trees in rrweb's serialisation: nodes, attributes, blocked subtrees, form fields.

`DomWalker` is the half of the walker that understands serialised nodes (FullSnapshot trees
and Mutation adds): it keeps the session's DOM mirror, decides what each attribute is (text,
structure, URL, secret, or layout to leave alone), blanks blocked subtrees in place, and says
what a form field holds from its type, name, id and autocomplete. Pure code, no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from runner.redact.mirror import Element, SessionMirror
from runner.redact.payloads import INPUT, JUNK, SECRET, STRUCT, TEXT, Collector
from runner.redact.rules import autocomplete_entity, field_entity, key_context

_NODE_KEYS = frozenset(
    {"type", "id", "tagName", "attributes", "childNodes", "textContent", "isStyle", "isSVG"}
) | frozenset({"needBlock", "rootId", "isShadowHost", "isShadow", "isCustom", "compatMode"})
_DOCTYPE_KEYS = _NODE_KEYS | {"name", "publicId", "systemId"}
_URL = -1

KEEP_ATTRS = frozenset(
    """_csstext accept align allow allowfullscreen aria-atomic aria-busy aria-checked
    aria-current aria-disabled aria-expanded aria-haspopup aria-hidden aria-level aria-live
    aria-modal aria-orientation aria-pressed aria-selected aria-sort async autocomplete
    autofocus autoplay bgcolor border cellpadding cellspacing charset checked class clear
    clip-path clip-rule color cols colspan contenteditable controls coords crossorigin cx
    cy d decoding defer dir disabled dominant-baseline draggable enctype enterkeyhint face
    fill fill-opacity fill-rule filter focusable font-family font-size font-weight
    formnovalidate frame frameborder gradienttransform gradientunits height hidden
    http-equiv inputmode integrity is ismap kind lang loading loop mask max maxlength media
    method min minlength multiple muted nomodule nonce novalidate nowrap offset opacity
    open part patternunits playsinline points preload preserveaspectratio r readonly
    referrerpolicy rel required reversed role rows rowspan rules rx ry sandbox scope
    scrolling selected shape size sizes slot span spellcheck srclang start step stop-color
    stop-opacity stroke stroke-dasharray stroke-dashoffset stroke-linecap stroke-linejoin
    stroke-miterlimit stroke-opacity stroke-width style tabindex target text-anchor
    transform translate type usemap valign valuetype version viewbox width wrap x x1 x2
    xmlns xmlns:xlink y y1 y2""".split()  # noqa: SIM905 - a word list reads better than 150 quoted strings
)
"""Layout, behaviour, CSS and SVG geometry: never text, left untouched."""
STRUCT_ATTRS = frozenset(
    """accept-charset aria-activedescendant aria-controls aria-describedby aria-labelledby
    aria-owns datetime for form headers hreflang id imagesrcset itemprop itemscope itemtype
    list name property srcset""".split()  # noqa: SIM905 - a word list reads better than 150 quoted strings
)
"""Identifiers and references: kept unless analysis finds PII in them."""
URL_ATTRS = frozenset(
    """action background cite codebase data formaction href icon longdesc manifest ping poster
    src xlink:href""".split()  # noqa: SIM905 - a word list reads better than 150 quoted strings
)
"""URLs: credentials removed, path analysed, query values judged by their key."""
BLOCK_KEEP_ATTRS = frozenset({"class", "style", "rr_width", "rr_height", "type"})
SAFE_META_NAMES = frozenset(
    {"viewport", "theme-color", "color-scheme", "robots", "referrer", "format-detection"}
) | frozenset({"generator", "googlebot", "apple-mobile-web-app-capable", "mobile-web-app-capable"})
_TYPE_ENTITY = {"email": "EMAIL_ADDRESS", "tel": "PHONE_NUMBER"}
TEXT_ATTRS = frozenset(
    {"title", "alt", "placeholder", "label", "summary", "abbr", "srcdoc", "download"}
) | frozenset(
    {"aria-label", "aria-valuetext", "aria-placeholder", "aria-description", "aria-roledescription"}
)
_ENUM_LIKE = re.compile(r"^[a-z][a-z0-9_\-]{0,23}$")
"""data-* and unknown attribute values like `open`, `col-6`: CSS state, kept (analysed)."""
_SMALL_NUMBER = re.compile(r"^-?\d{1,5}(?:\.\d+)?(?:px|%|em|rem|s|ms|deg)?$")
_MIRRORED = ("class", "id", "name", "type", "autocomplete")


_A_KEEP, _A_SECRET, _A_VALUE, _A_URL, _A_STRUCT, _A_TEXT, _A_CONTENT, _A_OTHER = range(8)
"""What an attribute's name alone says about its value (memoised per policy)."""
_ATTR_MEMO_MAX = 20_000


class DomWalker:
    """Walks serialised DOM nodes into a `Collector`, keeping a `SessionMirror`."""

    def __init__(self, collector: Collector, mirror: SessionMirror) -> None:
        self.col = collector
        self.mirror = mirror
        self.policy = collector.policy
        self._plain = not self.policy.block and len(self.policy.mask) == 1
        """No block or mask selectors: only rrweb's rr-block / rr-mask classes flag an element."""
        self._stash: dict[int, Element] = {}
        """Elements of Mutation adds built while registering them, by id() of their node."""

    def _selector_view(self, attrs: dict[str, Any]) -> dict[str, str]:
        view = {k: v for k in _MIRRORED if isinstance(v := attrs.get(k), str)}
        for k in self.policy.selector_attrs:
            v = attrs.get(k)
            if isinstance(v, str):
                view[k] = v
            elif v is True:
                view[k] = ""
        return view

    def _element(self, parent: int, tag: str, view: dict[str, str]) -> Element:
        extra = tuple((k, view[k]) for k in self.policy.selector_attrs if k in view)
        return Element(
            parent=parent,
            tag=tag,
            input_type=view.get("type", "").lower(),
            name=view.get("name", ""),
            elem_id=view.get("id", ""),
            autocomplete=view.get("autocomplete", ""),
            classes=view.get("class", ""),
            extra=extra,
            self_blocked=self.policy.blocks(tag, view),
            self_masked=self.policy.masks(tag, view),
        )

    def _make_element(self, parent: int, tag: str, attrs: Any) -> Element:
        """The element of a serialised node (what `_element` gives for its attributes)."""
        if not isinstance(attrs, dict) or not attrs:
            if self._plain:
                return Element(parent, tag, "", "", "", "", "", (), False, False)
            attrs = {}
        if not self._plain:
            return self._element(parent, tag, self._selector_view(attrs))
        get = attrs.get
        t, n, i, a, c = get("type"), get("name"), get("id"), get("autocomplete"), get("class")
        classes = c if isinstance(c, str) else ""
        blocked = masked = False
        if "rr-" in classes:
            words = classes.split()
            blocked, masked = "rr-block" in words, "rr-mask" in words
        return Element(
            parent,
            tag,
            t.lower() if isinstance(t, str) else "",
            n if isinstance(n, str) else "",
            i if isinstance(i, str) else "",
            a if isinstance(a, str) else "",
            classes,
            (),
            blocked,
            masked,
        )

    def _register(self, node: Any, parent: int) -> None:
        """Put a subtree into the mirror (first pass over Mutation adds)."""
        mirror = self.mirror
        stash = self._stash
        stack = [(node, parent)]
        while stack:
            n, p = stack.pop()
            if not isinstance(n, dict):
                continue
            nid = n.get("id")
            ntype = n.get("type")
            if type(nid) is int:
                if ntype == 2:
                    element = self._make_element(p, _lower(n.get("tagName")), n.get("attributes"))
                    stash[id(n)] = element
                    mirror.add_element(nid, element)
                elif ntype == 0:
                    mirror.add_element(nid, _document(p))
                elif ntype in (3, 4, 5):
                    mirror.add_text(nid, p)
            children = n.get("childNodes")
            if isinstance(children, list):
                child_parent = nid if type(nid) is int else -1
                stack.extend([(c, child_parent) for c in children])

    def _tree(
        self,
        cont: Any,
        key: Any,
        parent: int,
        blocked: bool,
        masked: bool,
        ptag: str,
        *,
        register: bool,
    ) -> None:
        """Walk one serialised subtree (iteratively: no recursion limit).

        The hottest loop of the engine: dict and str are tested with `type() is` (parsed
        JSON has no subclasses; anything else is walked as junk, which masks it).
        """
        col = self.col
        add_slot = col.add
        mirror = self.mirror
        stash = self._stash
        stack = [(cont, key, parent, blocked, masked, ptag)]
        pop = stack.pop
        push_all = stack.extend
        while stack:
            c, k, p, blk, msk, parent_tag = pop()
            node = c[k]
            if type(node) is not dict:
                col.json_value(c, k, JUNK)
                continue
            get = node.get
            ntype = get("type")
            nid = get("id")
            if type(nid) is not int:
                nid = None
            known = _DOCTYPE_KEYS if ntype == 1 else _NODE_KEYS
            if not known.issuperset(node):
                for extra in node.keys() - known:
                    col.json_value(node, extra, STRUCT, str(extra))
            if ntype == 3 or ntype == 4 or ntype == 5:
                if register and nid is not None:
                    mirror.add_text(nid, p)
                text = get("textContent")
                if type(text) is str:
                    if parent_tag == "style" or get("isStyle") is True:
                        continue
                    if blk:
                        if text:
                            node["textContent"] = ""
                    elif text and not text.isspace():
                        kind = SECRET if msk else INPUT if parent_tag == "textarea" else TEXT
                        add_slot(node, "textContent", text, kind)
                elif text is not None:
                    col.json_value(node, "textContent", JUNK)
            elif ntype == 2 or ntype == 0:
                attrs = get("attributes")
                if type(attrs) is not dict:
                    if attrs is not None:
                        col.json_value(node, "attributes", JUNK)
                    attrs = {}
                if ntype == 2:
                    tag = get("tagName")
                    tag = tag.lower() if type(tag) is str else ""
                    element = stash.pop(id(node), None) if stash else None
                    if element is None:
                        element = self._make_element(p, tag, attrs)
                else:
                    tag = ""
                    element = _document(p)
                if register and nid is not None:
                    mirror.add_element(nid, element)
                el_blocked = blk or element.self_blocked
                el_masked = msk or element.self_masked
                if el_blocked:
                    self._strip(attrs)
                elif attrs:
                    self._attributes(attrs, tag, element, el_masked, get("isSVG") is True)
                children = get("childNodes")
                if type(children) is list:
                    if children:
                        cp = nid if nid is not None else -1
                        push_all(
                            [
                                (children, j, cp, el_blocked, el_masked, tag)
                                for j in range(len(children) - 1, -1, -1)
                            ]
                        )
                elif children is not None:
                    col.json_value(node, "childNodes", JUNK)
            elif ntype != 1:
                col.json_value(c, k, JUNK)

    def _text(
        self,
        cont: Any,
        key: Any,
        text: str,
        parent_tag: str,
        blocked: bool,
        masked: bool,
        *,
        style: bool,
    ) -> None:
        if style:
            return
        if blocked:
            if text:
                cont[key] = ""
            return
        if not text or text.isspace():
            return
        kind = SECRET if masked else INPUT if parent_tag == "textarea" else TEXT
        self.col.add(cont, key, text, kind)

    def _strip(self, attrs: dict[str, Any]) -> None:
        for name in list(attrs):
            if str(name).lower() not in BLOCK_KEEP_ATTRS:
                del attrs[name]
                self.col.removed += 1

    def _attr_code(self, name: Any) -> int:
        memo = self.policy.attr_memo
        code = memo.get(name)
        if code is None:
            lname = name.lower() if isinstance(name, str) else str(name)
            if lname in KEEP_ATTRS or lname.startswith("rr_"):
                code = _A_KEEP
            elif self.policy.is_denied(lname):
                code = _A_SECRET
            elif lname == "value":
                code = _A_VALUE
            elif lname in URL_ATTRS:
                code = _A_URL
            elif lname in STRUCT_ATTRS or lname.startswith("on"):
                code = _A_STRUCT
            elif lname in TEXT_ATTRS:
                code = _A_TEXT
            else:
                code = _A_CONTENT if lname == "content" else _A_OTHER
            if len(memo) >= _ATTR_MEMO_MAX:
                memo.clear()
            memo[name] = code
        return code

    def _attributes(
        self, attrs: dict[str, Any], tag: str, element: Element, masked: bool, svg: bool
    ) -> None:
        col = self.col
        blanket = col.blanket
        memo = self.policy.attr_memo
        for name in attrs:
            value = attrs[name]
            if not isinstance(value, str) or not value:
                if isinstance(value, dict | list):
                    col.json_value(attrs, name, STRUCT, str(name))
                continue
            code = memo.get(name)
            if code is None:
                code = self._attr_code(name)
            if code == _A_KEEP:
                continue
            if code == _A_SECRET:
                kind = SECRET
            elif code == _A_VALUE:
                kind = _value_kind(tag, element.input_type)
            elif code == _A_URL:
                col.url(attrs, name, value, TEXT)
                continue
            elif code == _A_STRUCT:
                kind = STRUCT
            elif masked:
                kind = SECRET
            elif code == _A_TEXT:
                kind = TEXT
            elif code == _A_CONTENT and tag == "meta":
                meta_name = attrs.get("name")
                if "http-equiv" in attrs or "charset" in attrs or meta_name in SAFE_META_NAMES:
                    kind = STRUCT
                else:
                    kind = TEXT
            elif svg or _ENUM_LIKE.match(value) or _SMALL_NUMBER.match(value):
                kind = STRUCT
            else:
                kind = TEXT
            if kind in blanket and code != _A_VALUE:
                col.add(attrs, name, value, kind)
                continue
            lname = name.lower() if isinstance(name, str) else str(name)
            if code == _A_VALUE and kind == INPUT:
                secret, entity, context = self.field_info(element)
                col.add(attrs, name, value, SECRET if secret else INPUT, context, entity)
            else:
                entity = field_entity(lname) if lname.startswith("data-") else None
                col.add(attrs, name, value, kind, key_context(lname), entity)

    def field_info(self, element: Element) -> tuple[bool, str | None, str]:
        """(secret, entity, context) for a form field, from its type, name, id and autocomplete."""
        entity, secret = autocomplete_entity(element.autocomplete)
        policy = self.policy
        if (
            element.input_type == "password"
            or (element.name and policy.is_denied(element.name))
            or (element.elem_id and policy.is_denied(element.elem_id))
        ):
            secret = True
        entity = (
            entity
            or _TYPE_ENTITY.get(element.input_type)
            or (field_entity(element.name) if element.name else None)
            or (field_entity(element.elem_id) if element.elem_id else None)
        )
        return secret, entity, key_context(element.name or element.elem_id)

    # ---- incremental events -------------------------------------------------------------

    def _update_element(self, element: Element, changes: dict[str, Any]) -> None:
        if not any(k in changes for k in _MIRRORED) and not (
            self.policy.selector_attrs & changes.keys()
        ):
            return
        view = element.attrs()
        for k, v in changes.items():
            if isinstance(v, str):
                view[k] = v
            elif v is None:
                view.pop(k, None)
        fresh = self._element(element.parent, element.tag, view)
        for slot in Element.__slots__:
            setattr(element, slot, getattr(fresh, slot))
        if element.self_blocked or element.self_masked:
            self.mirror.mark_flagged()


def _value_kind(tag: str, input_type: str) -> int:
    if tag == "input":
        if input_type == "password":
            return SECRET
        if input_type in ("submit", "button", "reset", "image"):
            return TEXT
        if input_type in ("checkbox", "radio", "color", "range"):
            return STRUCT
        return INPUT
    if tag in ("textarea", "select"):
        return INPUT
    if tag == "":
        return SECRET
    return STRUCT


def _lower(tag: Any) -> str:
    return tag.lower() if isinstance(tag, str) else ""


def _document(parent: int) -> Element:
    return Element(parent, "#document", "", "", "", "", "", (), False, False)


def unknown_element() -> Element:
    return Element(-1, "", "", "", "", "", "", (), False, False)
