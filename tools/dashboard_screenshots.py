#!/usr/bin/env python3
"""Take the README's dashboard screenshots (docs/dashboard-*.png), both languages, with Debian's
headless chromium against a throw-away server on 127.0.0.1. Run from the repository root:
    python tools/dashboard_screenshots.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from osreapi import Executor
from osreapi.http.app import HttpSettings, make_app
from osreapi.http.server import HttpServer
from tests.browser import launch

DAG = [
    {"name": "fetch", "command_type": "sh", "command_content": "echo fetching; sleep 1; echo 42 rows"},
    {"name": "check", "command_type": "sh", "command_content": "echo checking; echo 'bad row 7' >&2; exit 3",
     "depends_on": ["fetch"]},
    {"name": "transform", "command_type": "sh", "command_content": "echo transformed", "depends_on": ["fetch"]},
    {"name": "load", "command_type": "sh", "command_content": "echo loaded", "depends_on": ["check", "transform"]},
]


def settle(driver, seconds: float = 1.5) -> None:
    time.sleep(seconds)  # a picture, not a test: let the feed and the log stream paint


def shoot(driver, url: str, name: str) -> None:
    driver.get(url)
    settle(driver)
    driver.save_screenshot(str(ROOT / "docs" / name))
    print("wrote", ROOT / "docs" / name)


def main() -> None:
    (ROOT / "docs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as data, Executor(data) as executor:
        server = HttpServer(make_app(executor, HttpSettings()), "127.0.0.1", 0)
        server.start()
        try:
            executor.submit([{"command_type": "sh", "command_content": "echo backup done"}], task_id="nightly-backup")
            failed = executor.submit(DAG, task_id="etl-orders")
            executor.submit([{"command_type": "sh", "command_content": "for i in $(seq 1 600); do echo tick $i; sleep 1; done"}],
                            task_id="long-runner")
            executor.wait(failed, 20)
            driver = launch(1280, 800)
            try:
                for lang in ("zh", "en"):
                    driver.get(server.url + "/ui/")
                    driver.execute_script("localStorage.setItem('osreapi.lang', arguments[0])", lang)
                    shoot(driver, server.url + "/ui/", f"dashboard-list-{lang}.png")
                    shoot(driver, server.url + "/ui/tasks/etl-orders", f"dashboard-task-{lang}.png")
            finally:
                driver.quit()
            executor.kill("long-runner")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
