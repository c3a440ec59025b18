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


class DomWalker:
    """Walks serialised DOM nodes into a `Collector`, keeping a `SessionMirror`."""

    def __init__(self, collector: Collector, mirror: SessionMirror) -> None:
        self.col = collector
        self.mirror = mirror
        self.policy = collector.policy

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

    def _register(self, node: Any, parent: int) -> None:
        """Put a subtree into the mirror (first pass over Mutation adds)."""
        stack = [(node, parent)]
        while stack:
            n, p = stack.pop()
            if not isinstance(n, dict):
                continue
            nid = n.get("id")
            ntype = n.get("type")
            if type(nid) is int:
                if ntype == 2:
                    tag = n.get("tagName")
                    attrs = n.get("attributes")
                    view = self._selector_view(attrs) if isinstance(attrs, dict) else {}
                    self.mirror.add_element(nid, self._element(p, _lower(tag), view))
                elif ntype == 0:
                    self.mirror.add_element(nid, _document(p))
                elif ntype in (3, 4, 5):
                    self.mirror.add_text(nid, p)
            children = n.get("childNodes")
            if isinstance(children, list):
                child_parent = nid if type(nid) is int else -1
                stack.extend((c, child_parent) for c in children)

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
        col = self.col
        stack = [(cont, key, parent, blocked, masked, ptag)]
        while stack:
            c, k, p, blk, msk, parent_tag = stack.pop()
            node = c[k]
            if not isinstance(node, dict):
                col.json_value(c, k, JUNK)
                continue
            ntype = node.get("type")
            nid = node.get("id")
            nid = nid if type(nid) is int else None
            for extra in node.keys() - (_DOCTYPE_KEYS if ntype == 1 else _NODE_KEYS):
                col.json_value(node, extra, STRUCT, str(extra))
            if ntype == 2 or ntype == 0:
                tag = _lower(node.get("tagName")) if ntype == 2 else ""
                attrs = node.get("attributes")
                if not isinstance(attrs, dict):
                    if attrs is not None:
                        col.json_value(node, "attributes", JUNK)
                    attrs = {}
                view = self._selector_view(attrs) if attrs else {}
                element = self._element(p, tag, view) if ntype == 2 else _document(p)
                if register and nid is not None:
                    self.mirror.add_element(nid, element)
                el_blocked = blk or element.self_blocked
                el_masked = msk or element.self_masked
                if el_blocked:
                    self._strip(attrs)
                elif attrs:
                    self._attributes(attrs, tag, element, el_masked, node.get("isSVG") is True)
                children = node.get("childNodes")
                if isinstance(children, list):
                    child_parent = nid if nid is not None else -1
                    for j in range(len(children) - 1, -1, -1):
                        stack.append((children, j, child_parent, el_blocked, el_masked, tag))
                elif children is not None:
                    col.json_value(node, "childNodes", JUNK)
            elif ntype in (3, 4, 5):
                if register and nid is not None:
                    self.mirror.add_text(nid, p)
                text = node.get("textContent")
                if isinstance(text, str):
                    style = node.get("isStyle") is True or parent_tag == "style"
                    self._text(node, "textContent", text, parent_tag, blk, msk, style=style)
                elif text is not None:
                    col.json_value(node, "textContent", JUNK)
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

    def _attributes(
        self, attrs: dict[str, Any], tag: str, element: Element, masked: bool, svg: bool
    ) -> None:
        col = self.col
        for name in attrs:
            value = attrs[name]
            if not isinstance(value, str) or not value:
                if isinstance(value, dict | list):
                    col.json_value(attrs, name, STRUCT, str(name))
                continue
            lname = name.lower() if isinstance(name, str) else str(name)
            kind = self._attr_kind(lname, tag, value, attrs, element, masked, svg)
            if kind is None:
                continue
            if kind == _URL:
                col.url(attrs, name, value, TEXT)
            elif lname == "value" and kind == INPUT:
                secret, entity, context = self.field_info(element)
                col.add(attrs, name, value, SECRET if secret else INPUT, context, entity)
            else:
                entity = field_entity(lname) if lname.startswith("data-") else None
                col.add(attrs, name, value, kind, key_context(lname), entity)

    def _attr_kind(
        self,
        lname: str,
        tag: str,
        value: str,
        attrs: dict[str, Any],
        element: Element,
        masked: bool,
        svg: bool,
    ) -> int | None:
        if lname in KEEP_ATTRS or lname.startswith("rr_"):
            return None
        if self.policy.is_denied(lname):
            return SECRET
        if lname == "value":
            return _value_kind(tag, element.input_type)
        if lname in URL_ATTRS:
            return _URL
        if lname in STRUCT_ATTRS or lname.startswith("on"):
            return STRUCT
        if masked or lname in TEXT_ATTRS:
            return SECRET if masked else TEXT
        if tag == "meta" and lname == "content":
            meta_name = attrs.get("name")
            if "http-equiv" in attrs or "charset" in attrs or meta_name in SAFE_META_NAMES:
                return STRUCT
            return TEXT
        if svg or _ENUM_LIKE.match(value) or _SMALL_NUMBER.match(value):
            return STRUCT
        return TEXT

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
