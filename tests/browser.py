"""Debian's headless chromium driven by Selenium (nothing downloads a browser), and what a test
reads from it: console errors and every URL the page requested."""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def launch(width: int = 1280, height: int = 900, lang: str = "zh-CN", tz: str | None = None) -> webdriver.Chrome:
    """A headless chromium; `tz` sets the browser's time zone (the server keeps its own)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", f"--lang={lang}", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    env = {**os.environ, "TZ": tz} if tz else None
    return webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=options)


def console_errors(driver: webdriver.Chrome, allowed: tuple[str, ...] = ()) -> list[str]:
    """SEVERE console entries, except those containing one of `allowed` (an expected 400 or 401)."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def requested_urls(driver: webdriver.Chrome) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def foreign(urls: list[str], origin: str) -> list[str]:
    """URLs of another origin (data: and about: never leave the browser)."""
    want = urlsplit(origin)
    return [u for u in urls if urlsplit(u).scheme not in ("data", "about", "blob")
            and (urlsplit(u).scheme, urlsplit(u).netloc) != (want.scheme, want.netloc)]
