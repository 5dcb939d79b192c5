"""The review console in a real browser: Debian's headless Chromium driven by Selenium against
the console served by uvicorn on 127.0.0.1, a real SMTP next hop, and a "remote" web server on
127.0.0.2 that must never be asked for anything."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.filter import Engine
from mailgate.filter.ops.config import packaged_rules_dir
from mailgate.filter.ops.stores import store_for
from mailgate.filter.store.quarantine import LocalQuarantine, QuarantineStore
from tests.support.console import (
    CARD,
    MASKED_CARD,
    PASSWORD,
    RunningConsole,
    add_users,
    card_message,
    console_app,
    console_process,
    hold,
    hostile_html_message,
    write_config,
)
from tests.support.net import free_port
from tests.support.postgres import SKIP_REASON, binaries, pg_server_fixture  # noqa: F401
from tests.support.smtp_sink import SmtpSink

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (see README: Testing)",
    ),
]
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


class RemoteHost:
    """A web server on 127.0.0.2 (the "foreign host") that records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.2:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Env:
    def __init__(self, folder: Path) -> None:
        self.sink = SmtpSink().start()
        self.remote = RemoteHost()
        self.config = write_config(folder, self.sink.port)
        self.store = LocalQuarantine(self.config.quarantine.path, node="gw-browser")
        self.engine = Engine.load(packaged_rules_dir())
        add_users(self.config)
        self.console = RunningConsole(console_app(self.config, self.store)).start()

    def stop(self) -> None:
        self.console.stop()
        self.remote.stop()
        self.sink.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    environment = Env(tmp_path_factory.mktemp("console-browser"))
    yield environment
    environment.stop()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test run's output folder for screenshots: console-screenshots/ in pytest's base
    temporary folder (choose it with --basetemp)."""
    folder = tmp_path_factory.getbasetemp() / "console-screenshots"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(driver: Any, env: Env, name: str) -> None:
    sign_in_at(driver, env.console.url, name)


def sign_in_at(driver: Any, url: str, name: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/login")
    label_for = {
        label.text: label.get_attribute("for")
        for label in driver.find_elements(By.TAG_NAME, "label")
    }
    driver.find_element(By.ID, label_for["Username"]).send_keys(name)
    driver.find_element(By.ID, label_for["Password"]).send_keys(PASSWORD)
    driver.find_element(By.XPATH, "//button[normalize-space()='Sign in']").click()
    # The click returns before the browser has followed the redirect.
    WebDriverWait(driver, 20).until(expected_conditions.url_to_be(f"{url}/"))


def requested_urls(driver: Any) -> list[str]:
    """Every network URL (http, https, ws) the browser asked for since the last call, from its
    DevTools log; the browser's own pages (chrome://, the new tab page) are not the network."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url.split(":", 1)[0] in ("http", "https", "ws", "wss"):
                urls.append(url)
    return urls


def test_a_reviewer_releases_the_held_card_message(env: Env, browser: Any, screenshots: Path):
    qid = hold(env.store, env.engine, card_message("Order 7781 for ACME"))
    reviewer_releases(browser, env.console.url, env.store, env.sink, qid, screenshots)


def test_a_reviewer_releases_through_a_database_backed_console(
    browser: Any, env: Env, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`mailgate console` itself, as a process, over the fleet's store in a private
    PostgreSQL: the same release as over the local store."""
    if binaries() is None:
        pytest.skip(SKIP_REASON)
    database = request.getfixturevalue("pg_server").create_database()
    port = free_port()
    config = write_config(tmp_path, env.sink.port, database=database, listen=f"127.0.0.1:{port}")
    add_users(config)
    store = store_for(config, command=True)
    qid = hold(store, env.engine, card_message("Order 7781 for ACME"))
    with console_process(config):
        reviewer_releases(browser, f"http://127.0.0.1:{port}", store, env.sink, qid)
    assert store.get(qid).node == "gw-console"  # as that console's configuration names it


def reviewer_releases(
    browser: Any,
    url: str,
    store: QuarantineStore,
    sink: SmtpSink,
    qid: str,
    screenshots: Path | None = None,
) -> None:
    """Sign in as a reviewer; the held card message is listed; open it: the evidence shows
    the card masked and never in full; give a reason, press Release: the next hop (the sink)
    receives it exactly once and the page says released; nothing outside the console was
    requested."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    sign_in_at(browser, url, "rita")
    row = browser.find_element(By.XPATH, f"//tr[.//a[@href='/message/{qid}']]")
    assert "Order 7781 for ACME" in row.text and "card-number" in row.text and "held" in row.text
    if screenshots:
        browser.save_screenshot(str(screenshots / "held-mail.png"))

    row.find_element(By.CSS_SELECTOR, "a.subject").click()
    assert browser.current_url.endswith(f"/message/{qid}")
    evidence = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "td.evidence-sample")]
    assert MASKED_CARD in evidence
    source = browser.page_source
    assert CARD not in source and CARD.replace(" ", "") not in source
    if screenshots:
        browser.save_screenshot(str(screenshots / "message.png"))

    before = len(sink.received)
    reason = browser.find_element(
        By.ID, browser.find_element(By.XPATH, "//label[.='Reason']").get_attribute("for")
    )
    reason.send_keys("Customer confirmed the order by phone")
    browser.find_element(By.XPATH, "//button[normalize-space()='Release']").click()
    WebDriverWait(browser, 30).until(
        expected_conditions.text_to_be_present_in_element((By.ID, "state"), "released")
    )
    assert "next hop replied: 250" in browser.find_element(By.ID, "reply").text
    got = sink.wait_for(before + 1)[before:]
    time.sleep(0.5)  # anything more would have arrived by now
    assert len(got) == 1 and len(sink.received) == before + 1
    assert got[0].rcpt_tos == ("bob@partner.example",)
    record = store.get(qid)
    assert record.state == "released"
    assert record.events[-1].reason == "Customer confirmed the order by phone"
    if screenshots:
        browser.save_screenshot(str(screenshots / "message-released.png"))
    urls = requested_urls(browser)
    assert all(url_.startswith(url) for url_ in urls), urls


def test_an_auditor_gets_no_release_button_and_a_forged_post_is_refused(
    env: Env, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    qid = hold(env.store, env.engine, card_message("Held for the auditor"))
    sign_in(browser, env, "audrey")
    browser.get(f"{env.console.url}/message/{qid}")
    assert MASKED_CARD in browser.page_source
    assert browser.find_elements(By.XPATH, "//button[normalize-space()='Release']") == []
    assert browser.find_elements(By.XPATH, "//button[normalize-space()='Delete']") == []
    # The forgery: a form the console never offered this role, posted by the signed-in
    # browser with the session's own valid CSRF token (taken from the sign-out form).
    browser.execute_script(
        """
        const token = document.querySelector('input[name=csrf]').value;
        const form = document.createElement('form');
        form.method = 'post';
        form.action = '/message/' + arguments[0] + '/release';
        for (const [name, value] of [['csrf', token], ['reason', 'forged']]) {
            const input = document.createElement('input');
            input.type = 'hidden'; input.name = name; input.value = value;
            form.appendChild(input);
        }
        document.body.appendChild(form);
        form.submit();
        """,
        qid,
    )
    assert browser.find_element(By.TAG_NAME, "h1").text == "403"
    assert "may not release" in browser.page_source
    assert env.store.get(qid).state == "held"


def test_a_hostile_message_runs_no_script_and_loads_nothing_remote(env: Env, browser: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    qid = hold(env.store, env.engine, hostile_html_message(env.remote.url))
    sign_in(browser, env, "rita")
    requested_urls(browser)  # forget the sign-in's requests
    browser.get(f"{env.console.url}/message/{qid}")
    time.sleep(1.0)  # time for any script, image or prefetch to run
    with pytest.raises(NoAlertPresentException):
        _ = browser.switch_to.alert.text
    assert browser.title.endswith("· mailgate console") and "pwned" not in browser.title
    assert browser.execute_script("return document.scripts.length") == 0
    assert browser.execute_script("return document.images.length") == 0
    shown = browser.find_element(By.CSS_SELECTOR, "pre.source").get_attribute("textContent")
    assert "<script>" in shown and f'<img src="{env.remote.url}/pixel.png"' in shown
    assert "javascript:alert(1)" in shown
    assert (
        "<script>alert('subject')</script> report" in browser.find_element(By.TAG_NAME, "h1").text
    )
    urls = requested_urls(browser)
    assert urls and all(url.startswith(env.console.url) for url in urls), urls
    assert env.remote.requests == []
