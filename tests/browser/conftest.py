"""
Real-browser fixtures: Playwright driving Debian's Chromium against
pytest-django's ``live_server``.

Playwright cannot download its own browsers here (``playwright install`` is
never run), so Chromium is the Debian package that ``make test`` installs.
A failed test leaves a full-page screenshot in test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import AbstractBaseUser
from playwright.sync_api import Browser, Page, sync_playwright
from pytest_django.live_server_helper import LiveServer

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium waits on Google services
# it cannot reach on this closed network and the launch hangs.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
PASSWORD = "pw-for-tests-1"  # what tests.factories.UserFactory sets
SCREENSHOTS = Path("test-artifacts") / "screenshots"

# Each phase's report, so the page fixture knows on teardown whether to
# take a screenshot.
PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo
) -> Iterator[pytest.TestReport]:
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report


@pytest.fixture(autouse=True)
def _allow_orm_beside_playwright(monkeypatch: pytest.MonkeyPatch) -> None:
    # Playwright's sync API keeps an asyncio loop running in the main thread,
    # and Django then refuses every ORM call the test makes (setup data,
    # database assertions) as "async unsafe". The test code is plain
    # synchronous code; only the tests in this directory need the escape.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def browser(live_server: LiveServer) -> Iterator[Browser]:
    # Per test, not per session, and set up after live_server (so after the
    # transactional database): the loop Playwright leaves running would make
    # the database flush after each test, and any later test calling
    # asyncio.run(), fail.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(request: pytest.FixtureRequest, browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    # Fail within seconds, not Playwright's 30 s, when an element is missing.
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    reports = request.node.stash.get(PHASE_REPORTS, {})
    if any(report.failed for report in reports.values()):
        name = re.sub(r"[^\w.-]+", "_", request.node.name)
        path = request.config.rootpath / SCREENSHOTS / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
    context.close()


@pytest.fixture
def login(page: Page, live_server: LiveServer) -> Callable[[AbstractBaseUser], None]:
    """Log a user in through the admin's own login form."""

    def log_in(user: AbstractBaseUser) -> None:
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", user.get_username())
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{live_server.url}/admin/")

    return log_in
