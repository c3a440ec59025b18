"""End-to-end fixtures: Debian's Chromium driven by Playwright, a bank-like page served by a
real aiohttp server, and real Runners (WebSocket and WebRTC) on the test Redis.

Needs `chromium` (apt), `playwright` (PyPI; its own browser is never downloaded) and rrweb
from npm in tests/e2e/node_modules (`npm ci --prefix tests/e2e`). Missing any of them, the
tests here are skipped with the reason; CI installs all three.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from runner.redact import Redactor
from tests.support import TENANT, RedisProc
from tests.webrtc.harness import LOOPBACK, RtcRunner, rtc_settings

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
RRWEB = NODE_MODULES / "rrweb" / "dist"
CONSOLE_PLUGIN = NODE_MODULES / "@rrweb" / "rrweb-plugin-console-record" / "dist"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root in CI
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]

# Tenant policies of the e2e Runners (a policies/ folder of their own). DETECT: detection,
# not mask-all, on page text, so the PII engine has to find what the page shows; console,
# network and network bodies recorded; the page's customer-name elements masked by selector,
# as a bank without an NER model configures it. DETECT_UNMARKED: the same without that
# selector. MASK_ALL: the strict built-in default.
DETECT_UNMARKED_POLICY = """
version = 1
[features]
network_bodies = true
[pii]
text = "detect"
mask_all_inputs = true
"""
DETECT_POLICY = DETECT_UNMARKED_POLICY + 'mask_selectors = [".customer-name"]\n'
MASK_ALL_POLICY = """
version = 1
[features]
network_bodies = true
[pii]
text = "mask_all"
"""
POLICIES = {
    "detect": DETECT_POLICY,
    "detect_unmarked": DETECT_UNMARKED_POLICY,
    "mask_all": MASK_ALL_POLICY,
}


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return "Debian's chromium is not installed (apt-get install -y chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (.venv/bin/pip install playwright)"
    if not (RRWEB / "rrweb.umd.cjs").exists() or not CONSOLE_PLUGIN.exists():
        return "rrweb is not installed (npm ci --prefix tests/e2e)"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _missing()
    if reason is None:
        return
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))


# -- the site: the bank page, the replay page, rrweb, the reference client -----------------


async def _verify(request: web.Request) -> web.Response:
    """The page's fetch: echoes the customer's details back, as a KYC check would."""
    body = await request.json()
    reply = {
        "name": body.get("name"),
        "pan": body.get("pan"),
        "mobile": body.get("mobile"),
        "email": request.query.get("email"),
        "status": "verified",
    }
    return web.Response(body=orjson.dumps(reply), content_type="application/json")


def _file(path: Path, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    body = path.read_bytes()  # read once, when the site is built

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    return serve


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def site() -> AsyncIterator[str]:
    """A real aiohttp server for the test pages, on loopback; yields its base URL."""
    app = web.Application()
    js, html = "application/javascript", "text/html"
    app.router.add_get("/bank.html", _file(HERE / "site" / "bank.html", html))
    app.router.add_get("/replay.html", _file(HERE / "site" / "replay.html", html))
    app.router.add_get(
        "/client/traceflow-client.js", _file(HERE / "client" / "traceflow-client.js", js)
    )
    app.router.add_get("/rrweb/rrweb.umd.cjs", _file(RRWEB / "rrweb.umd.cjs", js))
    app.router.add_get("/rrweb/style.css", _file(RRWEB / "style.css", "text/css"))
    app.router.add_get(
        "/rrweb/console-record.umd.cjs",
        _file(CONSOLE_PLUGIN / "rrweb-plugin-console-record.umd.cjs", js),
    )
    app.router.add_post("/api/kyc/verify", _verify)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, 0).start()
    yield f"http://{LOOPBACK}:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, off the network; each test gets a fresh context."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield instance
        await instance.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context()  # a fresh, empty profile
    ctx.set_default_timeout(15_000)
    yield ctx
    from playwright.async_api import Error as PlaywrightError

    for page in ctx.pages:
        # pagehide: the client closes its link. A page the test closed itself may still be
        # listed while it goes, and closing it again then fails: it is closed either way.
        with contextlib.suppress(PlaywrightError):
            await page.close(run_before_unload=True)
    await ctx.close()


StartRunner = Callable[..., Awaitable[RtcRunner]]


@pytest.fixture
async def start_runner(
    tmp_path: Path, redis_proc: RedisProc, redactor: Redactor
) -> AsyncIterator[StartRunner]:
    """Start Runner replicas (WebSocket and WebRTC) on the test Redis, with a tenant policy."""
    started: list[RtcRunner] = []

    async def start(policy: str = "detect", cloud: str = "", **webrtc: Any) -> RtcRunner:
        folder = tmp_path / f"policies-{policy}"
        if not folder.exists():
            folder.mkdir()
            (folder / f"{TENANT}.toml").write_text(POLICIES[policy])
        sections: dict[str, dict[str, Any]] = {"control_plane": {"policies_dir": str(folder)}}
        if cloud:  # forward to the fake cloud (the buffer is then emptied as chunks are sent)
            sections["forward"] = {"enabled": True, "linger_s": 0.05}
            sections["cloud"] = {"endpoint": cloud}
        instance = await RtcRunner.start(
            tmp_path, redis_proc.url, redactor, rtc_settings(**webrtc), **sections
        )
        started.append(instance)
        pii = instance.runner.policies.current.for_tenant(TENANT).pii
        assert f'text = "{pii.text}"' in POLICIES[policy], "the Runner took the test's policy"
        return instance

    yield start
    for instance in reversed(started):
        await instance.stop()
