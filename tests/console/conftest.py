"""Browser fixtures of the console tests: headless Debian Chromium through Selenium, a sign-in
helper and ``shot()`` screenshots (under the test's tmp dir and ``test-output/screenshots/``)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]
# CI keeps this directory (gitignored); every run overwrites the screenshots of the same name.
SCREENSHOTS = REPO / "test-output" / "screenshots"


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="session")
def browser(screenshot_dir: Path) -> Iterator[Any]:
    """One headless Chromium for the session: the system's browser and driver, nothing downloaded."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"console browser tests need Debian's chromium and chromium-driver: missing {', '.join(missing)} "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800",
                "--disable-gpu", "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    # An explicit driver path: Selenium Manager never runs, so nothing is downloaded.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def driver(browser: Any) -> Iterator[Any]:
    """The session's browser with no cookies left from the previous test."""
    browser.delete_all_cookies()
    yield browser
    browser.delete_all_cookies()


def shot(driver: Any, name: str, directory: Path | None = None) -> Path:
    """Save a screenshot of the current page as ``<name>.png`` in ``directory`` (a test's tmp dir)
    and in ``test-output/screenshots/``; returns the latter."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "page"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    out = SCREENSHOTS / f"{safe}.png"
    assert driver.save_screenshot(str(out)), f"screenshot {name} not written"
    if directory is not None:
        shutil.copyfile(out, directory / out.name)
    return out


def sign_in(driver: Any, base_url: str, token: str) -> None:
    """Sign in through the form, as a user would: paste the token, press Enter."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base_url}/console/sign-in")
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    field.send_keys(Keys.ENTER)
    WebDriverWait(driver, 30).until(ec.url_changes(f"{base_url}/console/sign-in"))
    assert "/sign-in" not in driver.current_url, driver.find_element(By.TAG_NAME, "main").text


def accessibility_problems(driver: Any) -> list[str]:
    """What the console promises every page: one <main>, an <h1>, a label for every form control,
    alt text on images. Returns the problems found (empty: none)."""
    return list(driver.execute_script("""
        const out = [];
        if (document.querySelectorAll('main').length !== 1) out.push('expected exactly one <main>');
        if (document.querySelectorAll('h1').length < 1) out.push('no <h1>');
        for (const el of document.querySelectorAll('input, select, textarea')) {
          if (el.type === 'hidden') continue;
          const labelled = (el.id && document.querySelector('label[for="' + CSS.escape(el.id) + '"]'))
            || el.closest('label') || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
          if (!labelled) out.push('control without a label: ' + (el.name || el.outerHTML.slice(0, 60)));
        }
        for (const img of document.querySelectorAll('img')) {
          if (!img.hasAttribute('alt')) out.push('image without alt: ' + img.src);
        }
        if (!document.querySelector('a.skip[href="#main"]')) out.push('no skip link to #main');
        return out;
    """))


@pytest.fixture
def shoot(screenshot_dir: Path) -> Any:
    """``shoot(driver, name)``: ``shot`` into this session's screenshot dir and test-output/screenshots/."""
    return lambda driver, name: shot(driver, name, screenshot_dir)


@pytest.fixture
def signer() -> Any:
    """``signer(driver, base_url, token)``: ``sign_in`` as a fixture (test modules need no import)."""
    return sign_in


@pytest.fixture
def a11y() -> Any:
    """``a11y(driver)``: ``accessibility_problems`` of the current page ([] when none)."""
    return accessibility_problems
