"""Acceptance in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by selenium) against `supervisor-daemon web` and the real daemon running the demo.

The demo's questions appear in an open inbox without a reload, a click answers them and
both supervisors complete; an agent's `<script>` shows as text; a form posted from
another site is refused; a token is asked once and kept in an HttpOnly cookie. The run
takes screenshots of the inbox and of a supervisor's page: into SCREENSHOTS_DIR when it
is set (`make screenshots` writes the README's docs/web-inbox.png and
docs/web-supervisor.png), into the test's own temporary directory otherwise, so that an
ordinary run leaves the tree as it was.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from daemon.store import Store
from tests.factories import new_question, new_state
from tests.processes import cli_env, daemon_process
from tests.queues import ask

pytestmark = pytest.mark.acceptance


def _shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path)


DEADLINE_S = 60.0
YES = "//section[@id='questions']//button[text()='yes']"
TOKEN = "browser-test-token-0123456789"  # noqa: S105 - a test token
XSS = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> ok?'
# Chromium as root in a container: no sandbox, nothing fetched from outside.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)


def _find(name: str, *candidates: str) -> str:
    for candidate in (name, *candidates):
        found = shutil.which(candidate)
        if found:
            return found
    raise AssertionError(
        f"{name} is not installed: apt-get install -y chromium chromium-driver (.ci/run does)"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium", "chromium-browser")
    profile = tempfile.mkdtemp(prefix="sd-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # The driver is named: selenium then has nothing to look up or download.
    driver = webdriver.Chrome(options=options, service=Service(_find("chromedriver")))
    driver.set_page_load_timeout(DEADLINE_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextlib.contextmanager
def web_server(dsn: str, **extra: str) -> Iterator[str]:
    """`supervisor-daemon web` on a free loopback port; its base URL."""
    env = cli_env({"SUPERVISOR_DAEMON_DATABASE_URL": dsn, "SUPERVISOR_DAEMON_LOG_FORMAT": "json",
                   "SUPERVISOR_DAEMON_WEB_ADDRESS": "127.0.0.1:0", **extra})  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "web"], env=env, stderr=subprocess.PIPE, text=True
    )
    reader: threading.Thread | None = None
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                raise AssertionError(f"web exited early: {seen}")
            seen.append(line)
            if line.startswith("serving the web page at "):
                url = line.split()[5].rstrip("/")
                break
        else:
            raise AssertionError(f"web did not start: {seen}")
        # Keep reading its log so that it never blocks on a full pipe.
        reader = threading.Thread(target=proc.stderr.read, daemon=True)
        reader.start()
        yield url
    finally:
        proc.terminate()
        code = proc.wait(timeout=DEADLINE_S)
        if proc.stderr is not None:
            if reader is not None:
                reader.join(timeout=DEADLINE_S)
            proc.stderr.close()
    assert code == 0


def _until(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    return WebDriverWait(driver, DEADLINE_S, poll_frequency=0.1).until(condition, what)


def _cards(driver: WebDriver) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, "#questions .question")


async def test_answer_the_demo_from_a_live_inbox(
    browser: WebDriver, dsn: str, tmp_path: Path, pool: asyncpg.Pool[Any]
) -> None:
    with web_server(dsn) as url:
        browser.get(url + "/")
        _until(browser, lambda d: d.find_element(By.ID, "live-status").get_attribute(
            "data-live") == "on", "the inbox listening")  # fmt: skip
        assert _cards(browser) == []
        with daemon_process(dsn, tmp_path, demo="1"):
            # No reload: the questions arrive through the page's event stream.
            _until(browser, lambda d: len(_cards(d)) == 2, "both demo questions, live")
            assert browser.title.startswith("(2) ")
            browser.save_screenshot(str(_shots(tmp_path) / "web-inbox.png"))
            supervisor_ids = set()
            for _ in range(2):
                (button, *_) = _until(browser, lambda d: d.find_elements(By.XPATH, YES), "one")
                card = button.find_element(By.XPATH, "./ancestor::article")
                link = card.find_element(By.CSS_SELECTOR, "dl.meta a")
                supervisor_ids.add(link.get_attribute("href").rsplit("/", 1)[1])
                button.click()
                _until(browser, expected_conditions.staleness_of(button), "the form sent")
                _until(browser, lambda d: d.find_elements(By.ID, "answered"), "the answer shown")
            assert len(supervisor_ids) == 2

            first = sorted(supervisor_ids)[0]
            deadline = time.monotonic() + DEADLINE_S
            while True:
                browser.get(f"{url}/supervisors/{first}")
                if browser.find_element(By.ID, "state").text == "completed":
                    break
                assert time.monotonic() < deadline, "the supervisor did not complete"
                await anyio.sleep(0.2)
            browser.save_screenshot(str(_shots(tmp_path) / "web-supervisor.png"))
            rows = await pool.fetch("SELECT state FROM supervisor_states")
            deadline = time.monotonic() + DEADLINE_S
            while {row["state"] for row in rows} != {"completed"}:
                assert time.monotonic() < deadline, rows
                await anyio.sleep(0.1)
                rows = await pool.fetch("SELECT state FROM supervisor_states")
    answers = await pool.fetch("SELECT answer, answered_by, applied_at FROM question_answers")
    assert [(a["answer"], a["answered_by"]) for a in answers] == [("yes", "web page")] * 2
    assert all(a["applied_at"] is not None for a in answers)


class _Attacker(http.server.BaseHTTPRequestHandler):
    """A page on another origin whose form posts an answer to the web page."""

    target = ""
    timeout = 5  # seconds a silent connection is kept

    def do_GET(self) -> None:
        page = (
            f'<form id="f" method="post" action="{self.target}">'
            '<input name="answer" value="yes"></form>'
            '<script>document.getElementById("f").submit()</script>'
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_script_in_a_question_is_text_and_a_forged_form_is_refused(
    browser: WebDriver, dsn: str, store: Store, pool: asyncpg.Pool[Any]
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    question = new_question(question=XSS, choices=("yes", "<b>no</b>"))
    await ask(pool, state.id, question)
    with web_server(dsn) as url:
        browser.get(url + "/")
        card = browser.find_element(By.ID, f"q-{question.id}")
        assert card.find_element(By.CSS_SELECTOR, "p.text").text == XSS
        assert [b.text for b in card.find_elements(By.CSS_SELECTOR, "button.choice")] == [
            "yes",
            "<b>no</b>",
        ]
        assert browser.execute_script("return window.pwned") is None

        _Attacker.target = f"{url}/questions/{question.id}/answer"
        # Threads: the browser may open a connection it never uses (a preconnect),
        # which a one-request-at-a-time server would wait on.
        attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
        attacker.daemon_threads = True
        attacker.block_on_close = False
        threading.Thread(target=attacker.serve_forever, daemon=True).start()
        try:
            browser.get(f"http://127.0.0.1:{attacker.server_address[1]}/")
            _until(browser, lambda d: d.current_url == _Attacker.target, "the forged post")
            _until(browser, lambda d: "security token" in d.page_source, "the refusal")
        finally:
            attacker.shutdown()
            attacker.server_close()
        assert await pool.fetchval("SELECT count(*) FROM question_answers") == 0


async def test_a_token_protected_page(
    browser: WebDriver, dsn: str, store: Store, pool: asyncpg.Pool[Any]
) -> None:
    state = await store.save_supervisor_state_full(new_state())
    question = new_question(question="Behind a token?")
    await ask(pool, state.id, question)
    with web_server(dsn, SUPERVISOR_DAEMON_WEB_TOKEN=TOKEN) as url:
        browser.delete_all_cookies()
        browser.get(url + "/supervisors")
        assert browser.current_url == f"{url}/login?next=/supervisors"
        assert TOKEN not in browser.page_source
        browser.find_element(By.NAME, "token").send_keys("not the token")
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        _until(browser, lambda d: d.find_elements(By.ID, "error"), "the refusal")
        browser.find_element(By.NAME, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        _until(browser, lambda d: d.current_url == f"{url}/supervisors", "the page asked for")
        browser.get(url + "/")  # not asked again
        assert browser.find_element(By.ID, f"q-{question.id}")
        (session,) = [c for c in browser.get_cookies() if c["name"] == "sd_session"]
        assert session["httpOnly"]
        assert session["sameSite"] == "Strict"
        assert TOKEN not in session["value"]

        async with httpx.AsyncClient(base_url=url, timeout=DEADLINE_S) as api:
            assert (await api.get("/api/questions")).status_code == 401
            bearer = {"authorization": f"Bearer {TOKEN}"}
            listed = (await api.get("/api/questions", headers=bearer)).json()
            assert [q["id"] for q in listed] == [str(question.id)]
