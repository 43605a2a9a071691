"""The live page in a real headless browser (Debian's chromium driven by Playwright):
it loads, shows a turn once one is recorded, and updates when the next one arrives."""

from __future__ import annotations

import shutil
import tempfile

import pytest
from web_helpers import FakeServer, FakeSession, LiveHttp, make_trace

from hark import sched
from hark.config import Config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (HARK_WITH_BROWSER=1 bash scripts/setup.sh installs it)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield ctx
        ctx.close()


@pytest.fixture()
def live(tmp_path):
    live = LiveHttp(FakeServer(), Config(home_dir=str(tmp_path)))
    yield live
    live.close()


def test_page_loads_shows_a_turn_and_updates(browser, live):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live.login_url("/?poll=200"))

    # loads: empty state, not ready yet
    sync_api.expect(page.locator("#status")).to_have_text("starting (loading models)")
    sync_api.expect(page.locator("#no-turns")).to_be_visible()
    sync_api.expect(page.locator("#no-satellites")).to_be_visible()

    # a satellite connects, the server becomes ready, a turn finishes
    live.server.sessions["kitchen"] = FakeSession("kitchen", peer="127.0.0.1:40001")
    live.server.ready.set()
    first = make_trace(420, satellite="kitchen")
    live.in_loop(live.server.finish_turn, first)

    sync_api.expect(page.locator("#status")).to_have_text("ready")
    sync_api.expect(page.locator("#satellites tbody tr[data-satellite=kitchen]")).to_contain_text(
        "127.0.0.1:40001")
    turn = page.locator(f'.turn[data-turn-id="{first.turn_id}"]')
    sync_api.expect(turn).to_contain_text("what is the capital of france")
    sync_api.expect(turn).to_contain_text("Paris is the capital of France.")
    sync_api.expect(turn).to_contain_text("end of speech → first audio 420 ms")
    # the waterfall: one bar per span, the total bar as wide as its share of the axis
    bars = turn.locator("svg rect")
    stages = [bars.nth(i).get_attribute("data-stage") for i in range(bars.count())]
    assert stages == [b["stage"] for b in live.obs.recent[-1]["bars"]]
    assert "total" in stages and "asr_final" in stages
    widths = {s: float(bars.nth(i).get_attribute("width")) for i, s in enumerate(stages)}
    assert widths["total"] > widths["asr_final"] > widths["intent"]
    sync_api.expect(page.locator("#percentiles tr[data-stage=total] .p50")).to_have_text("420")

    # the next turn arrives: the page updates without a reload, newest first
    second = make_trace(900, transcript="turn on the kitchen light",
                        reply="Turned on the kitchen light.", satellite="kitchen")
    live.in_loop(live.server.finish_turn, second)
    newest = page.locator(".turn").first
    sync_api.expect(newest).to_have_attribute("data-turn-id", str(second.turn_id))
    sync_api.expect(newest).to_contain_text("turn on the kitchen light")
    sync_api.expect(page.locator(".turn")).to_have_count(2)
    sync_api.expect(page.locator("#percentiles tr[data-stage=total] .p50")).to_have_text("660")
    sync_api.expect(page.locator("#turn-count")).to_have_text("2")

    # server counters and what each scheduling setting did
    live.server.stats = {"turns": 2, "turns_busy": 1}
    live.server.sched_results = [
        sched.SchedResult("realtime", "asr", False, "SCHED_RR priority 9 refused (EPERM)",
                          fix="LimitRTPRIO=95"),
        sched.SchedResult("affinity", "asr", True, "pinned to cores [1]")]
    sync_api.expect(page.locator("#server-stats tr[data-stat=turns_busy]")).to_contain_text("1")
    row = page.locator('#sched tr[data-setting="asr:realtime"]')
    sync_api.expect(row).to_contain_text("not applied")
    sync_api.expect(row).to_contain_text("fix: LimitRTPRIO=95")
    sync_api.expect(page.locator('#sched tr[data-setting="asr:affinity"]')).to_contain_text("ok")

    # the satellite leaves
    del live.server.sessions["kitchen"]
    sync_api.expect(page.locator("#no-satellites")).to_be_visible()
    assert errors == []
    page.close()


def test_page_says_when_the_server_is_gone(browser, tmp_path):
    live = LiveHttp(FakeServer(), Config(home_dir=str(tmp_path)))
    page = browser.new_page()
    page.goto(live.login_url("/?poll=200"))
    sync_api.expect(page.locator("#status")).to_have_text("starting (loading models)")
    live.close()
    sync_api.expect(page.locator("#status")).to_have_text("server unreachable")
    page.close()


def test_page_needs_a_login_and_says_when_it_is_lost(browser, tmp_path):
    live = LiveHttp(FakeServer(), Config(home_dir=str(tmp_path)))
    browser.clear_cookies()
    page = browser.new_page()
    try:
        resp = page.goto(live.url + "/?poll=200")
        assert resp is not None and resp.status == 401
        sync_api.expect(page.locator("body")).to_contain_text("hark token show --url")
        page.goto(live.login_url("/?poll=200"))
        assert page.url == live.url + "/?poll=200"  # the token is not left in the address
        sync_api.expect(page.locator("#status")).to_have_text("starting (loading models)")
        browser.clear_cookies()  # as when the server's token is replaced
        sync_api.expect(page.locator("#status")).to_contain_text("not logged in")
    finally:
        page.close()
        live.close()
