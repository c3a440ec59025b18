"""The walker, per event type: where text lives, what the DOM mirror adds, what stays untouched."""

from __future__ import annotations

from typing import Any

import orjson

from tests.redact.conftest import Redact
from tests.redact.support import (
    Dom,
    console,
    custom,
    input_event,
    meta,
    mutation,
    network,
)

EMAIL = "priya.sharma@example.com"
CARD = "4111 1111 1111 1111"


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def body_of(snapshot_event: dict[str, Any]) -> dict[str, Any]:
    html = snapshot_event["data"]["node"]["childNodes"][1]
    body: dict[str, Any] = html["childNodes"][1]
    return body


def test_mask_all_masks_text_nodes_keeping_length_and_whitespace(redact: Redact) -> None:
    """In mask_all mode every text node is `*` of the same length; whitespace and CSS stay."""
    dom = Dom()
    snap = dom.snapshot(
        dom.el("p", {}, dom.text("Hello Priya, 5 new")),
        head=(dom.el("style", {}, dom.text(".a { color: red }")),),
    )
    out, _ = redact([snap])
    body = body_of(out[0])
    assert body["childNodes"][0]["childNodes"][0]["textContent"] == "***** ****** * ***"
    head = out[0]["data"]["node"]["childNodes"][1]["childNodes"][0]
    assert head["childNodes"][0]["childNodes"][0]["textContent"] == ".a { color: red }"


def test_detect_mode_replaces_only_detected_pii(redact: Redact) -> None:
    """In detect mode text stays readable and only the PII in it becomes a token."""
    dom = Dom()
    snap = dom.snapshot(dom.el("p", {}, dom.text(f"Contact {EMAIL} for help")))
    out, outcome = redact([snap], text="detect")
    text = body_of(out[0])["childNodes"][0]["childNodes"][0]["textContent"]
    assert text.startswith("Contact <EMAIL_ADDRESS:")
    assert text.endswith("> for help")
    assert EMAIL not in dumps(out)
    assert outcome.entities == {"EMAIL_ADDRESS": 1}


def test_attributes_are_judged_by_name(redact: Redact) -> None:
    """Text attributes are masked, structural ones kept, URLs keep their shape, denied names go."""
    dom = Dom()
    attrs = {
        "class": "btn primary",
        "style": "color: red",
        "title": "Priya Sharma",
        "placeholder": "Your name",
        "alt": "photo",
        "href": f"https://bank.example/profile?email={EMAIL}&tab=2",
        "data-card": CARD,
        "id": "profile-link",
        "aria-label": "Open profile",
    }
    out, _ = redact([dom.snapshot(dom.el("a", attrs))])
    got = body_of(out[0])["childNodes"][0]["attributes"]
    assert got["class"] == "btn primary"
    assert got["style"] == "color: red"
    assert got["title"] == "***** ******"
    assert got["placeholder"] == "**** ****"
    assert got["aria-label"] == "**** *******"
    assert got["id"] == "profile-link"
    assert got["data-card"] == "**** **** **** ****"
    assert got["href"].startswith("https://bank.example/profile?email=")
    assert got["href"].endswith("&tab=*")
    assert EMAIL not in got["href"]


def test_url_credentials_are_removed_and_query_values_judged_by_key(redact: Redact) -> None:
    """user:pass@ is dropped; a denied query key is masked even in detect mode."""
    url = "https://ravi:s3cret@bank.example/a/b?otp=123456&page=3&q=hello"
    out, _ = redact([meta(url)], text="detect")
    href = out[0]["data"]["href"]
    assert href == "https://bank.example/a/b?otp=******&page=3&q=hello"


def test_mailto_and_tel_links_are_replaced_whole_in_detect_mode(redact: Redact) -> None:
    """A mailto: or tel: link is the address itself: the field rule replaces it."""
    dom = Dom()
    snap = dom.snapshot(
        dom.el("a", {"href": f"mailto:{EMAIL}"}), dom.el("a", {"href": "tel:+919876543210"})
    )
    out, _ = redact([snap], text="detect")
    links = body_of(out[0])["childNodes"]
    assert links[0]["attributes"]["href"].startswith("<EMAIL_ADDRESS:")
    assert links[1]["attributes"]["href"].startswith("<PHONE_NUMBER:")


def test_input_events_follow_the_element_from_an_earlier_batch(redact: Redact) -> None:
    """The mirror remembers a password field across batches; its Input event is masked even
    when inputs are otherwise analysed."""
    dom = Dom()
    pwd = dom.el("input", {"type": "password", "name": "pwd"})
    text_in = dom.el("input", {"type": "text", "name": "note"})
    redact([dom.snapshot(pwd, text_in)], text="detect", mask_all_inputs=False)
    out, _ = redact(
        [input_event(pwd["id"], "hunter2 4111"), input_event(text_in["id"], f"hi {EMAIL}")],
        text="detect",
        mask_all_inputs=False,
    )
    assert out[0]["data"]["text"] == "******* ****"
    assert out[1]["data"]["text"].startswith("hi <EMAIL_ADDRESS:")


def test_card_autocomplete_and_deny_key_fields_are_secret(redact: Redact) -> None:
    """autocomplete=cc-*, and name/id matching deny keys, make an input secret."""
    dom = Dom()
    cc = dom.el("input", {"type": "text", "autocomplete": "cc-number"})
    otp = dom.el("input", {"type": "text", "id": "loginOtp"})
    out, _ = redact(
        [dom.snapshot(cc, otp), input_event(cc["id"], CARD), input_event(otp["id"], "482913")],
        text="detect",
        mask_all_inputs=False,
    )
    assert out[1]["data"]["text"] == "**** **** **** ****"
    assert out[2]["data"]["text"] == "******"


def test_field_names_say_what_an_input_holds(redact: Redact) -> None:
    """Without an NER model, a name typed into a `fullName` field is still tokenized as PERSON."""
    dom = Dom()
    name = dom.el("input", {"type": "text", "name": "fullName"})
    out, outcome = redact(
        [dom.snapshot(name), input_event(name["id"], "Priya Sharma")],
        text="detect",
        mask_all_inputs=False,
    )
    assert out[1]["data"]["text"].startswith("<PERSON:")
    assert outcome.entities == {"PERSON": 1}


def test_input_on_an_unknown_node_is_masked(redact: Redact) -> None:
    """An Input event for a node the mirror never saw is treated as sensitive."""
    out, _ = redact([input_event(999, "Priya Sharma")], text="detect", mask_all_inputs=False)
    assert out[0]["data"]["text"] == "***** ******"


def test_block_selectors_blank_the_subtree_and_keep_the_nodes(redact: Redact) -> None:
    """A blocked element keeps its node ids but loses its text and (non-layout) attributes,
    also for later mutations and inputs inside it."""
    dom = Dom()
    field = dom.el("input", {"type": "text", "value": "Priya"})
    blocked = dom.el(
        "div", {"class": "sensitive-data box", "title": "Priya"}, dom.text("Balance 42"), field
    )
    snap = dom.snapshot(blocked)
    added = dom.el("span", {"title": "x"}, dom.text("Priya again"))
    events = [
        snap,
        mutation(adds=[{"parentId": blocked["id"], "nextId": None, "node": added}]),
        mutation(texts=[{"id": blocked["childNodes"][0]["id"], "value": "Balance 43"}]),
        input_event(field["id"], "typed"),
    ]
    out, _ = redact(events, text="detect", block_selectors=(".sensitive-data",))
    div = body_of(out[0])["childNodes"][0]
    assert div["id"] == blocked["id"]
    assert div["attributes"] == {"class": "sensitive-data box"}
    assert div["childNodes"][0]["textContent"] == ""
    assert div["childNodes"][1]["attributes"] == {"type": "text"}
    add = out[1]["data"]["adds"][0]["node"]
    assert add["attributes"] == {}
    assert add["childNodes"][0]["textContent"] == ""
    assert out[2]["data"]["texts"][0]["value"] == ""
    assert out[3]["data"]["text"] == ""


def test_mask_selectors_mask_text_now_and_after_mutations_in_detect_mode(redact: Redact) -> None:
    """Text under a mask selector is masked whole in detect mode (a name no recognizer finds):
    in the snapshot, in nodes added later, in text changes and in text attributes; the
    elements keep their ids and the text around them is still only analysed."""
    dom = Dom()
    name = dom.el("span", {"class": "customer-name"}, dom.text("Priya Sharma"))
    greeting = dom.el("p", {"title": "for Priya Sharma"}, dom.text("Welcome back, "), name)
    result = dom.el("p", {"id": "result"})
    snap = dom.snapshot(greeting, result)
    echoed = dom.el("span", {"class": "customer-name", "title": "Priya Sharma"}, dom.text("Priya"))
    events = [
        snap,
        mutation(adds=[{"parentId": result["id"], "nextId": None, "node": echoed}]),
        mutation(texts=[{"id": name["childNodes"][0]["id"], "value": "Sharma Priya"}]),
    ]
    out, _ = redact(events, text="detect", mask_selectors=(".customer-name",))
    body = body_of(out[0])
    assert body["childNodes"][0]["childNodes"][0]["textContent"] == "Welcome back, "
    span = body["childNodes"][0]["childNodes"][1]
    assert (span["id"], span["childNodes"][0]["textContent"]) == (name["id"], "***** ******")
    add = out[1]["data"]["adds"][0]["node"]
    assert add["childNodes"][0]["textContent"] == "*****"
    assert "Priya" not in dumps(add)
    assert out[2]["data"]["texts"][0]["value"] == "****** *****"
    unmasked, _ = redact(events[:1], text="detect")
    assert "Priya Sharma" in dumps(unmasked), "without the selector detect mode keeps the name"


def test_selectors_added_mid_session_cover_elements_recorded_before(redact: Redact) -> None:
    """A policy that gains a mask or block selector judges the session's known elements again:
    the next batch's changes inside them are masked or blanked, with no new snapshot."""
    dom = Dom()
    name = dom.el("span", {"class": "customer-name"}, dom.text("Priya Sharma"))
    box = dom.el("div", {"id": "kyc-box"}, dom.text("Balance 42"))
    redact([dom.snapshot(name, box)], text="detect")
    changes = [
        mutation(texts=[{"id": name["childNodes"][0]["id"], "value": "Priya Sharma"}]),
        mutation(texts=[{"id": box["childNodes"][0]["id"], "value": "Balance 43"}]),
    ]
    out, _ = redact(
        changes, text="detect", mask_selectors=(".customer-name",), block_selectors=("#kyc-box",)
    )
    assert out[0]["data"]["texts"][0]["value"] == "***** ******"
    assert out[1]["data"]["texts"][0]["value"] == ""
    again, _ = redact(changes, text="detect")
    assert again[0]["data"]["texts"][0]["value"] == "Priya Sharma", "and dropping them undoes it"


def test_rr_block_class_is_honoured_without_a_policy_selector(redact: Redact) -> None:
    """rrweb's own `rr-block` class blocks like a policy selector."""
    dom = Dom()
    out, _ = redact(
        [dom.snapshot(dom.el("div", {"class": "rr-block"}, dom.text("secret")))], text="detect"
    )
    assert body_of(out[0])["childNodes"][0]["childNodes"][0]["textContent"] == ""


def test_class_change_to_blocked_blocks_later_text_changes(redact: Redact) -> None:
    """An attribute mutation that adds a blocked class makes the element's later text empty."""
    dom = Dom()
    txt = dom.text("hello")
    div = dom.el("div", {"class": "plain"}, txt)
    events = [
        dom.snapshot(div),
        mutation(attributes=[{"id": div["id"], "attributes": {"class": "plain secret"}}]),
        mutation(texts=[{"id": txt["id"], "value": f"mail {EMAIL}"}]),
    ]
    out, _ = redact(events, text="detect", block_selectors=("div.secret",))
    assert out[2]["data"]["texts"][0]["value"] == ""


def test_mutation_adds_before_their_parent_are_still_judged_by_it(redact: Redact) -> None:
    """Adds whose parent appears later in the same mutation inherit the parent's block."""
    dom = Dom()
    body_snap = dom.snapshot()
    body_id = body_of(body_snap)["id"]
    parent = dom.el("div", {"class": "secret"})
    child = dom.text(f"Priya {EMAIL}")
    events = [
        body_snap,
        mutation(
            adds=[
                {"parentId": parent["id"], "nextId": None, "node": child},
                {"parentId": body_id, "nextId": None, "node": parent},
            ]
        ),
    ]
    out, _ = redact(events, text="detect", block_selectors=(".secret",))
    assert out[1]["data"]["adds"][0]["node"]["textContent"] == ""


def test_textarea_text_is_an_input(redact: Redact) -> None:
    """Text in a textarea is typed input: masked while inputs are masked, even in detect mode."""
    dom = Dom()
    out, _ = redact(
        [dom.snapshot(dom.el("textarea", {}, dom.text("my address is 12 MG Road")))], text="detect"
    )
    assert (
        body_of(out[0])["childNodes"][0]["childNodes"][0]["textContent"]
        == "** ******* ** ** ** ****"
    )


def test_console_payloads_are_parsed_and_masked_per_string(redact: Redact) -> None:
    """Console arguments (JSON strings) keep their shape; their strings are masked or analysed."""
    ev = console("log", "user", {"email": EMAIL, "count": 3})
    out, _ = redact([ev])
    payload = out[0]["data"]["payload"]
    assert payload["level"] == "log"
    assert orjson.loads(payload["payload"][0]) == "****"
    assert orjson.loads(payload["payload"][1]) == {"email": "*" * len(EMAIL), "count": 3}
    out, _ = redact([ev], text="detect")
    arg = orjson.loads(out[0]["data"]["payload"]["payload"][1])
    assert arg["email"].startswith("<EMAIL_ADDRESS:")


def test_network_headers_bodies_and_urls(redact: Redact) -> None:
    """Credentials headers are removed; denied keys masked; JSON bodies judged by their keys."""
    request = {
        "url": f"https://api.bank.example/v1/users?email={EMAIL}",
        "method": "POST",
        "status": 200,
        "requestHeaders": {
            "Authorization": "Bearer abc",
            "Cookie": "sid=1",
            "X-Api-Key": "k123",
            "Content-Type": "application/json",
        },
        "responseHeaders": {"set-cookie": "sid=2"},
        "requestBody": orjson.dumps(
            {"mobile": "9876543210", "password": "p@ss", "amount": 500}
        ).decode(),
        "responseBody": "pan=ABCPE1234F&ok=1",
    }
    out, _ = redact([network(request)], text="detect")
    req = out[0]["data"]["payload"]["requests"][0]
    assert "Authorization" not in req["requestHeaders"]
    assert "Cookie" not in req["requestHeaders"]
    assert req["responseHeaders"] == {}
    assert req["requestHeaders"]["X-Api-Key"] == "****"
    assert req["requestHeaders"]["Content-Type"] == "application/json"
    body = orjson.loads(req["requestBody"])
    assert body["mobile"].startswith("<PHONE_NUMBER:")
    assert body["password"] == "****"
    assert body["amount"] == 500
    assert req["responseBody"] == "pan=**********&ok=1"
    assert EMAIL not in req["url"]
    assert req["method"] == "POST"


def test_oversize_bodies_are_replaced_by_a_note(redact: Redact) -> None:
    """A body over max_body_bytes is not analysed: it is replaced by its size."""
    request = {"url": "https://x.example/", "responseBody": "a" * 70_000}
    out, _ = redact([network(request)], text="detect")
    assert out[0]["data"]["payload"]["requests"][0]["responseBody"].startswith("[body removed")


def test_custom_event_payloads_are_walked_as_json(redact: Redact) -> None:
    """Custom payloads: strings masked or analysed by key, big numbers analysed, keys checked."""
    payload = {
        "customer": {"name": "Priya Sharma", "aadhaar": "2345 6789 0124"},
        "cards": [4111111111111111, 12],
        f"{EMAIL}": True,
    }
    out, _ = redact([custom("checkout", payload)], text="detect")
    got = out[0]["data"]
    assert got["tag"] == "checkout"
    assert got["payload"]["customer"]["name"].startswith("<PERSON:")
    assert got["payload"]["customer"]["aadhaar"] == "**** **** ****"
    assert str(got["payload"]["cards"][0]).startswith("<CREDIT_CARD:")
    assert got["payload"]["cards"][1] == 12
    assert EMAIL not in dumps(out)


def test_canvas_fill_text_is_text(redact: Redact) -> None:
    """Text drawn on a canvas is masked; drawing commands are kept."""
    ev = {
        "type": 3,
        "timestamp": 1,
        "data": {
            "source": 9,
            "id": 5,
            "type": 0,
            "commands": [
                {"property": "fillText", "args": ["Priya", 10, 20]},
                {"property": "fillRect", "args": [0, 0, 5, 5]},
            ],
        },
    }
    out, _ = redact([ev])
    cmds = out[0]["data"]["commands"]
    assert cmds[0]["args"] == ["*****", 10, 20]
    assert cmds[1]["args"] == [0, 0, 5, 5]


def test_css_and_geometry_events_are_untouched(redact: Redact) -> None:
    """StyleSheetRule, StyleDeclaration, mouse and scroll events come out byte-identical."""
    events = [
        {
            "type": 3,
            "timestamp": 1,
            "data": {
                "source": 8,
                "id": 4,
                "adds": [{"rule": "a::after{content:'x@y.z'}", "index": 0}],
            },
        },
        {
            "type": 3,
            "timestamp": 2,
            "data": {
                "source": 13,
                "id": 4,
                "set": {"property": "color", "value": "red"},
                "index": [0],
            },
        },
        {
            "type": 3,
            "timestamp": 3,
            "data": {"source": 1, "positions": [{"x": 1, "y": 2, "id": 3, "timeOffset": 0}]},
        },
        {"type": 3, "timestamp": 4, "data": {"source": 3, "id": 1, "x": 0, "y": 40}},
    ]
    out, _ = redact(events, text="detect")
    assert out == events


def test_junk_events_are_kept_with_every_string_masked(redact: Redact) -> None:
    """Events that are not rrweb events never raise; their strings are masked, shape kept."""
    events: list[Any] = [
        "john@example.com",
        42,
        None,
        {"type": "x", "data": {"name": "Priya"}},
        {"type": 99, "data": ["Priya", 1]},
        {"type": 2, "data": {"node": "Priya"}},
        {"type": 3, "data": {"source": 5, "text": {"deep": "Priya"}, "id": "x"}},
    ]
    out, outcome = redact(events, text="detect")
    assert outcome.kept == len(events)
    assert out[0] == "*" * 16
    assert out[1] == 42
    assert out[2] is None
    assert out[3] == {"type": "*", "data": {"name": "*****"}}
    assert out[4]["data"] == ["*****", 1]
    assert out[5]["data"]["node"] == "*****"
    assert out[6]["data"]["text"] == {"deep": "*****"}
