"""`POST /v1/rtc/offer`: credentials first, only data-channel offers, caps per project."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from runner.ingest.rtc_ice import IcePin, pin_ice
from tests.support import API_KEY, DISABLED_KEY, OTHER_KEY, until
from tests.webrtc.conftest import StartRtc
from tests.webrtc.harness import LOOPBACK, RtcRunner, RtcSdk, post_offer


class Callback(Collector):
    """Reads metric families from a callback at scrape time, as the Runner's registry does."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


async def data_offer() -> tuple[RTCPeerConnection, str]:
    """A real browser-like offer with one data channel, on loopback."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("traceflow")
    pin_ice(pc, IcePin((LOOPBACK,)))
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_bad_credentials_are_refused_before_any_peer_exists(rtc: RtcRunner) -> None:
    """No key, an unknown key and a disabled project get 401/401/403 and create no peer."""
    pc, sdp = await data_offer()
    assert (await post_offer(rtc.offer_url, sdp, token=None))[0] == 401
    status, body = await post_offer(rtc.offer_url, sdp, token="tf_not_a_known_key")
    assert (status, body["error"]) == (401, "unauthorized")
    status, body = await post_offer(rtc.offer_url, sdp, token=DISABLED_KEY)
    assert (status, body["error"]) == (403, "disabled")
    assert rtc.peers.stats.opened == 0
    assert len(rtc.peers) == 0
    await pc.close()


async def test_malformed_and_media_offers_are_refused(rtc: RtcRunner) -> None:
    """Non-JSON, non-offer, garbage SDP and audio offers get 400; an oversize body 413."""
    pc, sdp = await data_offer()
    assert (await post_offer(rtc.offer_url, "", body=b"not json"))[0] == 400
    assert (await post_offer(rtc.offer_url, "", body=b'{"type":"answer","sdp":"v=0"}'))[0] == 400
    status, body = await post_offer(rtc.offer_url, "v=0\r\nthis is not sdp\r\n")
    assert (status, body["error"]) == (400, "bad_offer")
    media = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    media.addTransceiver("audio")
    await media.setLocalDescription(await media.createOffer())
    status, body = await post_offer(rtc.offer_url, media.localDescription.sdp)
    assert (status, body["error"]) == (400, "bad_offer")
    huge = sdp + "a=x-padding:" + "x" * 70_000 + "\r\n"
    assert (await post_offer(rtc.offer_url, huge))[0] == 413
    assert len(rtc.peers) == 0, "every refused offer's peer connection was closed"
    await pc.close()
    await media.close()


async def test_disabled_webrtc_has_no_offer_route(start_rtc: StartRtc) -> None:
    """With [webrtc] enabled = false the offer endpoint answers 404 (SDKs use the WebSocket)."""
    rtc = await start_rtc({"enabled": False})
    pc, sdp = await data_offer()
    assert (await post_offer(rtc.offer_url, sdp))[0] == 404
    await pc.close()


async def test_peer_cap_per_project(start_rtc: StartRtc) -> None:
    """Past max_peers_per_project an offer gets 429; other projects go on; a close frees a slot."""
    rtc = await start_rtc({"max_peers_per_project": 2})
    first, second = RtcSdk(rtc.offer_url, "r-cap-1"), RtcSdk(rtc.offer_url, "r-cap-2")
    await first.connect()
    await second.connect()
    third = RtcSdk(rtc.offer_url, "r-cap-3")
    assert await third.open() == 429
    other = RtcSdk(rtc.offer_url, "r-cap-other", token=OTHER_KEY)
    assert (await other.connect())["type"] == "welcome"
    assert rtc.peers.open_by_project() == {"web": 2, "other": 1}
    await first.close()
    await until(lambda: rtc.peers.open_by_project().get("web") == 1, what="a freed slot")
    assert await third.open() == 200
    assert rtc.peers.stats.offers_refused["too_many_connections"] == 1
    for sdk in (second, third, other):
        await sdk.close()


async def test_hello_token_of_another_project_is_refused(rtc: RtcRunner) -> None:
    """A hello whose token belongs to another project than the offer's is closed with 4401."""
    sdk = RtcSdk(rtc.offer_url, "r-mixed")
    await sdk.open()
    await sdk.send({"type": "hello", "token": OTHER_KEY, "session_id": "r-mixed"})
    assert await sdk.recv() == {
        "type": "close",
        "code": 4401,
        "reason": "hello token is for another project",
    }
    await sdk.wait_closed()
    await until(lambda: len(rtc.peers) == 0, what="the peer to be closed")
    await sdk.close()


async def test_hello_may_rely_on_the_signaling_credentials(rtc: RtcRunner) -> None:
    """A hello without a token is authenticated by the bearer key of the offer."""
    sdk = RtcSdk(rtc.offer_url, "r-header")
    await sdk.open()
    await sdk.send({"type": "hello", "session_id": "r-header"})
    assert (await sdk.recv())["type"] == "welcome"
    assert await sdk.batch(1) == {"type": "ack", "seq": 1}
    await sdk.close()


async def test_other_channels_are_closed_and_traceflow_still_works(rtc: RtcRunner) -> None:
    """A channel with another label is closed at once; it does not become a session."""
    sdk = RtcSdk(rtc.offer_url, "r-label")
    assert await sdk.open(label="chat") == 200
    await sdk.wait_closed()
    assert len(rtc.runner.connections) == 0
    await sdk.close()
    again = RtcSdk(rtc.offer_url, "r-label")
    assert (await again.connect())["type"] == "welcome"
    await again.close()


async def test_cors_lets_allowed_origins_post_offers(start_rtc: StartRtc) -> None:
    """Preflight and answers carry CORS headers for allowed origins; others get 403."""
    rtc = await start_rtc({"allowed_origins": ["https://netbanking.acme.example"]})
    good, bad = "https://netbanking.acme.example", "https://evil.example"
    preflight = {"Access-Control-Request-Method": "POST"}
    async with aiohttp.ClientSession() as http:
        async with http.options(rtc.offer_url, headers={"Origin": good, **preflight}) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == good
            assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        async with http.options(rtc.offer_url, headers={"Origin": bad, **preflight}) as r:
            assert r.status == 403
        pc, sdp = await data_offer()
        offer = {"sdp": sdp, "type": "offer"}
        auth = {"Authorization": f"Bearer {API_KEY}"}
        async with http.post(rtc.offer_url, json=offer, headers={"Origin": bad, **auth}) as r:
            assert r.status == 403
        async with http.post(rtc.offer_url, json=offer, headers={"Origin": good, **auth}) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == good
        await pc.close()


async def test_peer_counts_are_exported_as_metrics(rtc: RtcRunner) -> None:
    """Open peers per project, opened/closed totals and refusals appear in Prometheus text."""
    registry = CollectorRegistry()
    registry.register(Callback(rtc.peers.collect))
    sdk = RtcSdk(rtc.offer_url, "r-metrics")
    await sdk.connect()
    assert await RtcSdk(rtc.offer_url, "r-metrics-x", token="tf_wrong_key_000").open() == 401
    text = generate_latest(registry).decode()
    assert 'traceflow_webrtc_peers{project="web"} 1.0' in text
    assert "traceflow_webrtc_peers_opened_total 1.0" in text
    assert 'traceflow_webrtc_offers_refused_total{code="unauthorized"} 1.0' in text
    await sdk.close()
    await until(lambda: len(rtc.peers) == 0, what="the peer to close")
    text = generate_latest(registry).decode()
    assert "traceflow_webrtc_peers_closed_total" in text
    served = rtc.runner.metrics_text().decode()  # what GET /metrics serves
    assert "traceflow_webrtc_peers_closed_total{reason=" in served
    assert "traceflow_webrtc_peers_opened_total 1.0" in served
