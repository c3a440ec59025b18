"""Text slots and the walkers for free-form payloads: JSON, URLs, headers, bodies.

A *slot* is one string (or large integer) in an event that may hold PII,
with where it sits (container and key), how it is judged (its kind) and
what its key says about it. Walkers only collect slots; a later step decides
every slot of a batch at once (so the detection engine sees many strings per
call) and writes the replacements back. Values that are rebuilt from parts
(a URL from its query values, a JSON body from its tree) register a
*finalizer* that re-assembles them after the parts were replaced.

Pure code, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit

import orjson

from runner.redact.rules import ALWAYS_REMOVED_HEADERS, CompiledPolicy, field_entity, key_context
from runner.redact.tokens import mask

TEXT = 0
"""Free text: masked in mask_all mode, analysed in detect mode."""
INPUT = 1
"""A value the user typed: masked while inputs are masked, else analysed."""
SECRET = 2
"""Always masked (deny keys, password fields, junk)."""
STRUCT = 3
"""Structural (ids, URL paths, stack frames): kept unless analysis finds PII, in both modes."""
NUMBER = 4
"""A large JSON integer: kept unless analysis finds PII."""
JUNK = 5
"""Walk mode for input without the expected shape: every string secret, numbers as usual."""

ENC_NONE = 0
ENC_URL = 1

SAFE_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "age",
        "cache-control",
        "connection",
        "content-encoding",
        "content-language",
        "content-length",
        "content-type",
        "date",
        "etag",
        "expires",
        "keep-alive",
        "last-modified",
        "pragma",
        "server",
        "strict-transport-security",
        "traceparent",
        "tracestate",
        "transfer-encoding",
        "user-agent",
        "vary",
        "via",
        "x-content-type-options",
        "x-frame-options",
        "x-request-id",
    }
)
URL_HEADERS = frozenset({"referer", "location", "origin", "content-location"})
_URL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp", "file", ""})
_KEEP_SCHEMES = frozenset({"data", "blob", "about"})
_SCHEME_ENTITY = {"mailto": "EMAIL_ADDRESS", "tel": "PHONE_NUMBER", "sms": "PHONE_NUMBER"}
_FORM_BODY = re.compile(r"^[^\s=&]+=[^\s&]*(?:&[^\s=&]+=[^\s&]*)*$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_KEY_MIGHT_HOLD_PII = re.compile(r"[0-9@]")
_URL_SAFE = "/*:<>_~.-!$'(),;@"
BIG_INT = 100_000
"""JSON integers from here up may be card, account or phone numbers and are analysed."""


class Slot:
    """One string (or big integer) that may hold PII, and where to write its replacement."""

    __slots__ = ("container", "context", "enc", "event", "field", "key", "kind", "value")

    def __init__(
        self,
        container: Any,
        key: Any,
        value: str | int,
        kind: int,
        event: int,
        context: str = "",
        field: str | None = None,
        enc: int = ENC_NONE,
    ) -> None:
        self.container = container
        self.key = key
        self.value = value
        self.kind = kind
        self.event = event
        self.context = context
        self.field = field
        self.enc = enc

    def write(self, replacement: str) -> None:
        """Put the replacement where the original was."""
        if self.enc == ENC_URL:
            replacement = quote(replacement, safe=_URL_SAFE)
        self.container[self.key] = replacement


class Collector:
    """Gathers the slots and finalizers of one batch while the walkers run."""

    def __init__(self, policy: CompiledPolicy, max_body_bytes: int) -> None:
        self.policy = policy
        self.max_body_bytes = max_body_bytes
        self.slots: list[Slot] = []
        self.finalizers: list[Callable[[], None]] = []
        self.event = 0
        self.removed = 0
        """Attributes, headers and URL credentials removed outright."""
        self.oversize_bodies = 0
        self.masked = 0
        """Slots masked outright while walking (they need no decision and keep no `Slot`)."""
        self.blanket = frozenset(
            {SECRET}
            | ({TEXT} if not policy.detect else set())
            | ({INPUT} if policy.mask_all_inputs or not policy.detect else set())
        )
        """Slot kinds this policy masks whatever they hold (always SECRET; TEXT in mask_all;
        INPUT while inputs are masked)."""
        self._allow = policy.allow_values

    def add(
        self,
        container: Any,
        key: Any,
        value: str | int,
        kind: int,
        context: str = "",
        field: str | None = None,
        enc: int = ENC_NONE,
    ) -> None:
        """Record one slot of the current event, or mask it right away when its kind is
        masked outright (an allowed TEXT or INPUT value is kept as a slot, left as it is)."""
        if kind in self.blanket and (
            kind == SECRET
            or not (self._allow and isinstance(value, str) and value.strip() in self._allow)
        ):
            masked = mask(str(value))
            container[key] = quote(masked, safe=_URL_SAFE) if enc == ENC_URL else masked
            self.masked += 1
            return
        self.slots.append(Slot(container, key, value, kind, self.event, context, field, enc))

    def finalize(self) -> None:
        """Re-assemble rebuilt values, innermost first."""
        for fn in reversed(self.finalizers):
            fn()

    # ---- generic JSON -------------------------------------------------------------------

    def json_value(self, container: Any, key: Any, kind: int, ctx_key: str = "") -> None:
        """Collect every string (and big integer) under container[key], judged by its key.

        Iterative (no recursion limit). A value under a denied key is secret
        whole; a key that itself looks like PII becomes a structural slot.
        """
        policy = self.policy
        stack: list[tuple[Any, Any, str, int]] = [(container, key, ctx_key, kind)]
        while stack:
            cont, k, ckey, knd = stack.pop()
            value = cont[k]
            if isinstance(value, str):
                self._json_string(cont, k, value, ckey, SECRET if knd == JUNK else knd)
            elif isinstance(value, dict):
                renames: list[tuple[str, list[str]]] = []
                for child_key, child in value.items():
                    child_kind = knd
                    if isinstance(child_key, str):
                        if knd not in (SECRET, JUNK) and (
                            policy.is_denied(child_key)
                            or child_key.lower() in ALWAYS_REMOVED_HEADERS
                        ):
                            child_kind = SECRET
                        if len(child_key) >= 6 and _KEY_MIGHT_HOLD_PII.search(child_key):
                            holder = [child_key]
                            renames.append((child_key, holder))
                            self.add(holder, 0, child_key, STRUCT)
                    if not _plain_scalar(child, child_kind):
                        stack.append((value, child_key, str(child_key), child_kind))
                if renames:
                    self.finalizers.append(_renamer(value, renames))
            elif isinstance(value, list):
                for i, child in enumerate(value):
                    if not _plain_scalar(child, knd):
                        stack.append((value, i, ckey, knd))
            elif type(value) is int and (value >= BIG_INT or value <= -BIG_INT or knd == SECRET):
                self.add(
                    cont,
                    k,
                    value,
                    SECRET if knd == SECRET else NUMBER,
                    key_context(ckey),
                    field_entity(ckey) if ckey else None,
                )
            elif type(value) is float and knd == SECRET:
                self.add(cont, k, repr(value), SECRET)

    def _json_string(self, cont: Any, k: Any, value: str, ckey: str, kind: int) -> None:
        if kind != SECRET and value:
            first = value[0]
            if first in "{[" and len(value) <= self.max_body_bytes:
                if self.nested_json(cont, k, value, kind):
                    return
            elif (
                first in "hH"
                and value[:8].lower().startswith(("http://", "https://"))
                and " " not in value
            ):
                self.url(cont, k, value, kind)
                return
        context = key_context(ckey) if ckey else ""
        self.add(cont, k, value, kind, context, field_entity(ckey) if ckey else None)

    def nested_json(self, cont: Any, k: Any, text: str, kind: int) -> bool:
        """If `text` is JSON, walk its tree and re-serialise it afterwards; False if not JSON."""
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            return False
        holder = [parsed]
        self.finalizers.append(_serializer(cont, k, holder))
        self.json_value(holder, 0, kind)
        return True

    # ---- URLs ---------------------------------------------------------------------------

    def url(self, cont: Any, k: Any, value: str, kind: int) -> None:
        """A URL: credentials removed, path and fragment analysed, query values judged by key."""
        original = value
        value = value.strip()
        m = _SCHEME.match(value)
        scheme = m.group(1).lower() if m else ""
        if scheme in _KEEP_SCHEMES:
            return
        if scheme in _SCHEME_ENTITY:
            self.add(cont, k, value, kind, "", _SCHEME_ENTITY[scheme])
            return
        if scheme not in _URL_SCHEMES:
            self.add(cont, k, value, kind)
            return
        try:
            parts = urlsplit(value)
            _ = parts.port
        except ValueError:
            self.add(cont, k, value, kind)
            return
        netloc = parts.netloc
        if "@" in netloc:
            netloc = netloc.rpartition("@")[2]
            self.removed += 1
        pieces: list[str] = []
        rest = value
        if m is not None:
            pieces.append(m.group(0))
            rest = value[m.end() :]
        if rest.startswith("//"):
            pieces.append("//" + netloc)
        if parts.path:
            pieces.append(parts.path)
            if _KEY_MIGHT_HOLD_PII.search(parts.path):
                self.add(pieces, len(pieces) - 1, unquote(parts.path), STRUCT, enc=ENC_URL)
        hash_at = value.find("#")
        query_at = value.find("?")
        if query_at >= 0 and (hash_at < 0 or query_at < hash_at):
            pieces.append("?")
            self._query(pieces, parts.query, kind)
        if hash_at >= 0:
            pieces.append("#")
            if "=" in parts.fragment:
                self._query(pieces, parts.fragment, kind)
            elif parts.fragment:
                pieces.append(parts.fragment)
                if _KEY_MIGHT_HOLD_PII.search(parts.fragment):
                    self.add(pieces, len(pieces) - 1, unquote(parts.fragment), STRUCT, enc=ENC_URL)
        self.finalizers.append(_joiner(cont, k, pieces, original))

    def _query(self, pieces: list[str], query: str, kind: int) -> None:
        policy = self.policy
        for i, pair in enumerate(query.split("&")):
            if i:
                pieces.append("&")
            name, eq, raw = pair.partition("=")
            pieces.append(name + eq)
            if not eq:
                if name and _KEY_MIGHT_HOLD_PII.search(name):
                    pieces[-1] = name
                    self.add(pieces, len(pieces) - 1, unquote_plus(name), STRUCT, enc=ENC_URL)
                continue
            pieces.append(raw)
            if not raw:
                continue
            decoded_name = unquote_plus(name)
            slot_kind = SECRET if policy.is_denied(decoded_name) else kind
            self.add(
                pieces,
                len(pieces) - 1,
                unquote_plus(raw),
                slot_kind,
                key_context(decoded_name),
                field_entity(decoded_name),
                ENC_URL,
            )

    # ---- network ------------------------------------------------------------------------

    def headers(self, cont: Any, k: Any, kind: int) -> None:
        """Headers: credentials removed, denied names secret, others judged by name."""
        headers = cont[k]
        if not isinstance(headers, dict):
            self.json_value(cont, k, kind)
            return
        for name in list(headers):
            value = headers[name]
            lname = str(name).lower()
            if lname in ALWAYS_REMOVED_HEADERS:
                del headers[name]
                self.removed += 1
            elif not isinstance(value, str):
                self.json_value(headers, name, SECRET if self.policy.is_denied(lname) else kind)
            elif self.policy.is_denied(lname):
                self.add(headers, name, value, SECRET)
            elif lname in SAFE_HEADERS:
                self.add(headers, name, value, STRUCT)
            elif lname in URL_HEADERS:
                self.url(headers, name, value, kind)
            else:
                self.add(headers, name, value, kind, key_context(lname), field_entity(lname))

    def body(self, cont: Any, k: Any, kind: int) -> None:
        """A request or response body: size-capped, parsed as JSON or a form when it is one."""
        body = cont[k]
        if not isinstance(body, str):
            self.json_value(cont, k, kind)
            return
        size = len(body.encode("utf-8", "surrogatepass"))
        if size > self.max_body_bytes:
            cont[k] = f"[body removed by the Runner: {size} bytes over the limit]"
            self.oversize_bodies += 1
            return
        stripped = body.strip()
        if stripped[:1] in ("{", "[") and self.nested_json(cont, k, body, kind):
            return
        if _FORM_BODY.match(stripped):
            pieces: list[str] = []
            self._query(pieces, stripped, kind)
            self.finalizers.append(_joiner(cont, k, pieces, body))
            return
        self.add(cont, k, body, kind)

    def network(self, cont: Any, k: Any) -> None:
        """The network plugin's payload: one request or `{"requests": [...]}`."""
        payload = cont[k]
        if isinstance(payload, dict) and isinstance(payload.get("requests"), list):
            requests = payload["requests"]
            for i in range(len(requests)):
                self._request(requests, i)
            for other in payload:
                if other != "requests":
                    self.json_value(payload, other, TEXT, str(other))
        elif isinstance(payload, dict) and isinstance(payload.get("data"), dict):
            self._request(payload, "data")
            for other in payload:
                if other != "data":
                    self.json_value(payload, other, STRUCT, str(other))
        else:
            self._request(cont, k)

    def _request(self, cont: Any, k: Any) -> None:
        req = cont[k]
        if not isinstance(req, dict):
            self.json_value(cont, k, TEXT)
            return
        for name in list(req):
            value = req[name]
            if name in ("url", "name") and isinstance(value, str):
                self.url(req, name, value, TEXT)
            elif name in ("requestHeaders", "responseHeaders", "headers"):
                self.headers(req, name, TEXT)
            elif name in ("requestBody", "responseBody", "body"):
                self.body(req, name, TEXT)
            elif name in _REQUEST_STRUCT:
                self.json_value(req, name, STRUCT, name)
            else:
                self.json_value(req, name, TEXT, str(name))

    def console(self, cont: Any, k: Any) -> None:
        """The console plugin's payload: level kept, stack frames analysed, arguments as JSON."""
        payload = cont[k]
        if not isinstance(payload, dict):
            self.json_value(cont, k, TEXT)
            return
        for name in payload:
            value = payload[name]
            if name == "level" and isinstance(value, str):
                continue
            if name == "trace":
                self.json_value(payload, name, STRUCT)
            elif name == "payload" and isinstance(value, list):
                for i, arg in enumerate(value):
                    if isinstance(arg, str) and self.nested_json(value, i, arg, TEXT):
                        continue
                    self.json_value(value, i, TEXT)
            else:
                self.json_value(payload, name, TEXT, str(name))


def _plain_scalar(value: Any, kind: int) -> bool:
    """Nothing to collect: null, a boolean, a float, or a small integer outside secrets."""
    t = type(value)
    if t is int:
        return kind != SECRET and -BIG_INT < value < BIG_INT
    return value is None or t is bool or (t is float and kind != SECRET)


_REQUEST_STRUCT = frozenset(
    {"method", "initiatorType", "type", "status", "statusText", "responseType", "startTime"}
) | frozenset({"endTime", "duration", "id", "timestamp", "phase"})


def _serializer(cont: Any, k: Any, holder: list[Any]) -> Callable[[], None]:
    def finish() -> None:
        cont[k] = orjson.dumps(holder[0]).decode()

    return finish


def _joiner(cont: Any, k: Any, pieces: list[str], original: str) -> Callable[[], None]:
    def finish() -> None:
        joined = "".join(pieces)
        if joined != original:
            cont[k] = joined

    return finish


def _renamer(d: dict[Any, Any], renames: list[tuple[str, list[str]]]) -> Callable[[], None]:
    def finish() -> None:
        mapping = {old: holder[0] for old, holder in renames if holder[0] != old}
        if not mapping:
            return
        items = list(d.items())
        d.clear()
        for key, value in items:
            d[mapping.get(key, key)] = value

    return finish
