"""The dashboard at /ui/, seen in a real headless chromium against a real server."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import psutil
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from osreapi.http.app import HttpSettings
from osreapi.records import StepRecord, TaskRecord
from osreapi.storage.database import Database
from osreapi.vocabulary import State

from .browser import console_errors, foreign, launch, requested_urls
from .conftest import Client, gone, read_pid, sh, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    browser = launch()
    yield browser
    browser.quit()


@pytest.fixture
def browser(driver: WebDriver) -> Iterator[WebDriver]:
    driver.get_log("browser"), driver.get_log("performance")  # start each test with empty logs
    yield driver
    driver.get("about:blank")  # closes the page's streams before its server stops


def until(driver: WebDriver, predicate: Callable[[WebDriver], object], timeout: float = 15) -> object:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(predicate)


def text_of(driver: WebDriver, css: str) -> str:
    """In one script call: the page re-renders rows as events arrive, so a held element may go stale."""
    return driver.execute_script("return document.querySelector(arguments[0])?.textContent ?? ''", css)


def open_page(driver: WebDriver, client: Client, path: str = "/ui/") -> None:
    driver.get(client.url + path)
    until(driver, lambda d: "off" not in d.find_element(By.ID, "live").get_attribute("class"))


def step_state(driver: WebDriver, index: int) -> str:
    return text_of(driver, f"#steps tr[data-step='{index}'] .state")


# -- served as promised (no browser needed) -----------------------------------------------


def test_pages_are_served_with_a_same_origin_policy(client: Client) -> None:
    redirect = client.get("/ui")
    assert redirect.status == 301 and redirect.header("Location").endswith("/ui/")
    page = client.get("/ui/")
    assert page.status == 200 and page.header("Content-Security-Policy").startswith("default-src 'self'")
    assert client.get("/ui/tasks/some-task").body == page.body  # deep links serve the same page
    html = page.body.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "style=" not in html  # nothing inline
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing from another origin
    for asset in re.findall(r"(?:src|href)=\"(/ui/[^\"]+)\"", html):
        assert client.get(asset).status == 200, asset
    assert client.get("/ui/../etc/passwd").status == 404
    states = client.get("/ui/vocabulary.json").json["states"]
    assert states["killed"] == ["已终止", "killed"]


# -- seen in a real browser ---------------------------------------------------------------


def test_a_submitted_task_appears_without_reload_and_nothing_leaves_the_origin(browser: WebDriver, client: Client) -> None:
    open_page(browser, client)
    browser.execute_script("window.sameDocument = true")
    client.submit([sh("echo hello")], "?id=seen-live")
    row = "#tasks tr[data-id='seen-live']"
    until(browser, lambda d: text_of(d, f"{row} .state") == "已结束")
    assert browser.execute_script("return window.sameDocument") is True  # no reload happened
    assert "已结束 1" in text_of(browser, row)  # step counts by state
    assert foreign(requested_urls(browser), client.url) == []
    assert console_errors(browser) == []


def test_deep_link_live_output_then_kill_from_the_page(browser: WebDriver, client: Client, tmp_path) -> None:
    pid_file = tmp_path / "pid"
    script = f"echo $$ > {pid_file}; i=0; while [ $i -lt 600 ]; do echo line$i; i=$((i+1)); sleep 0.1; done"
    task_id = client.submit([sh(script, name="chatty"), sh("echo never", name="after")])
    open_page(browser, client, f"/ui/tasks/{task_id}")
    pid = read_pid(pid_file)
    until(browser, lambda d: "line5" in text_of(d, "#log"))  # arrives while it runs
    assert step_state(browser, 0) == "执行中"
    browser.find_element(By.CSS_SELECTOR, "#steps tr[data-step='0'] [data-step-action='kill']").click()
    until(browser, lambda d: step_state(d, 0) == "已终止")
    assert gone(pid)
    assert "成功" in text_of(browser, "#action-answer")
    until(browser, lambda d: step_state(d, 1) == "已跳过")
    assert browser.find_elements(By.CSS_SELECTOR, "#dag g.node.st-killed")  # the drawing follows the states
    until(browser, lambda d: text_of(d, "#task-state") in ("已结束", "已终止"))  # the task has ended
    browser.find_element(By.CSS_SELECTOR, "#task-view .actions [data-action='delete']").click()
    until(browser, lambda d: text_of(d, "#action-answer").startswith("删除: 成功"))
    assert client.get(f"/{task_id}").status == 404
    assert console_errors(browser) == []


def test_pause_and_resume_from_the_page_and_an_action_that_does_not_apply(browser: WebDriver, client: Client, tmp_path) -> None:
    pid_file = tmp_path / "pid"
    task_id = client.submit([sh(f"echo $$ > {pid_file}; exec sleep 60", name="sleeper")])
    open_page(browser, client, f"/ui/tasks/{task_id}")
    process = psutil.Process(read_pid(pid_file))
    until(browser, lambda d: step_state(d, 0) == "执行中")
    browser.find_element(By.CSS_SELECTOR, "#task-view .actions [data-action='pause']").click()
    until(browser, lambda d: step_state(d, 0) == "已暂停")
    assert wait_until(lambda: process.status() == psutil.STATUS_STOPPED)  # when it next runs
    browser.find_element(By.CSS_SELECTOR, "#task-view .actions [data-action='pause']").click()
    until(browser, lambda d: "400" in text_of(d, "#action-answer"))  # the server's answer is shown
    browser.find_element(By.CSS_SELECTOR, "#task-view .actions [data-action='delete']").click()
    until(browser, lambda d: "409" in text_of(d, "#action-answer"))  # not while it runs
    browser.find_element(By.CSS_SELECTOR, "#task-view .actions [data-action='resume']").click()
    until(browser, lambda d: step_state(d, 0) == "执行中")
    assert wait_until(lambda: process.status() != psutil.STATUS_STOPPED)
    browser.find_element(By.CSS_SELECTOR, "#task-view .actions [data-action='kill']").click()
    until(browser, lambda d: text_of(d, "#task-state") == "已终止")
    assert console_errors(browser, allowed=("status of 400", "status of 409")) == []


def test_a_bad_submission_shows_the_servers_400_beside_the_form(browser: WebDriver, client: Client) -> None:
    open_page(browser, client)
    browser.find_element(By.ID, "submit-steps").send_keys(json.dumps([{"command_type": "sh"}]))
    browser.find_element(By.ID, "submit-button").click()
    until(browser, lambda d: "400" in text_of(d, "#submit-answer"))
    assert "command_content" in text_of(browser, "#submit-answer")
    assert client.get("/").json["data"]["total"] == 0  # nothing was run
    assert console_errors(browser, allowed=("status of 400",)) == []


def test_a_good_submission_opens_the_task_and_english_is_a_toggle_away(browser: WebDriver, client: Client) -> None:
    open_page(browser, client)
    browser.find_element(By.ID, "lang-toggle").click()
    until(browser, lambda d: text_of(d, "#submit-button") == "Submit")
    until(browser, lambda d: "off" not in d.find_element(By.ID, "live").get_attribute("class"))
    browser.find_element(By.ID, "submit-steps").send_keys(json.dumps([sh("echo from the form")]))
    browser.find_element(By.ID, "submit-id").send_keys("from-form")
    browser.find_element(By.ID, "submit-button").click()
    until(browser, lambda d: d.current_url.endswith("/ui/tasks/from-form"))
    until(browser, lambda d: text_of(d, "#task-state") == "stopped")
    until(browser, lambda d: "from the form" in text_of(d, "#log"))
    browser.find_element(By.ID, "lang-toggle").click()  # back to Chinese for the next tests
    until(browser, lambda d: text_of(d, "#task-state") == "已结束")
    assert console_errors(browser) == []


def test_capped_output_shows_the_truncation_marker(browser: WebDriver, make_server) -> None:
    client = make_server(max_output=2000)
    task_id = client.submit([sh("i=0; while [ $i -lt 500 ]; do echo line-$i; i=$((i+1)); done")])
    client.wait(task_id)
    open_page(browser, client, f"/ui/tasks/{task_id}")
    until(browser, lambda d: "2000" in text_of(d, "#log-notice"))
    assert "line-499" in text_of(browser, "#log")


def test_the_token_is_asked_once_and_kept_in_session_storage_only(browser: WebDriver, make_server) -> None:
    client = make_server(settings=HttpSettings(token="open-sesame"))
    assert client.get("/ui/").status == 200 and client.get("/").status == 401  # the page alone is open
    client.request("POST", "/?id=guarded", body=json.dumps([sh("true")]), headers={"Authorization": "Bearer open-sesame"})
    browser.get(client.url + "/ui/")
    until(browser, lambda d: d.find_element(By.ID, "token-dialog").get_attribute("open") is not None)
    browser.find_element(By.ID, "token-input").send_keys("open-sesame")
    browser.find_element(By.ID, "token-ok").click()
    until(browser, lambda d: text_of(d, "#tasks tr[data-id='guarded'] .state") == "已结束")
    assert browser.execute_script("return sessionStorage.getItem('osreapi.token')") == "open-sesame"
    assert "open-sesame" not in json.dumps(browser.execute_script("return {...localStorage}"))
    browser.refresh()  # same tab: no second prompt
    until(browser, lambda d: text_of(d, "#tasks tr[data-id='guarded'] .state") == "已结束")
    assert browser.find_element(By.ID, "token-dialog").get_attribute("open") is None
    assert all("open-sesame" not in url for url in requested_urls(browser))  # never in a URL
    assert console_errors(browser, allowed=("status of 401",)) == []


def seed_finished_tasks(data_dir, count: int) -> None:
    """A data dir holding `count` finished tasks, as a server that ran them would leave it."""
    db = Database(data_dir / "db")
    now = time.time()
    try:
        for i in range(count):
            begin = now - count + i
            task = TaskRecord(f"stored-{i:05d}", "sequential", 1, begin, State.STOPPED, begin, begin + 0.5, now + 3600)
            db.save(task.id, task, (StepRecord(0, f"{task.id}-0", State.STOPPED, 0, "", begin, begin + 0.5),))
    finally:
        db.close()


def test_usable_with_10000_stored_tasks(browser: WebDriver, make_server, tmp_path) -> None:
    seed_finished_tasks(tmp_path / "data", 10_000)
    client = make_server(data_dir=tmp_path / "data")
    open_page(browser, client)
    until(browser, lambda d: "10000" in text_of(d, "#page-info"), timeout=30)
    rows = lambda: browser.execute_script("return document.querySelectorAll('#tasks tbody tr').length")
    assert rows() == 50  # paged: the DOM holds one page, not ten thousand rows
    assert text_of(browser, "#tasks tbody tr:first-child a") == "stored-09999"  # newest first
    browser.find_element(By.ID, "next-page").click()
    until(browser, lambda d: text_of(d, "#tasks tbody tr:first-child a") == "stored-09949")
    Select(browser.find_element(By.ID, "state-filter")).select_by_value("running")
    until(browser, lambda d: rows() == 0)
    client.submit([sh("exec sleep 30")], "?id=among-many")
    until(browser, lambda d: text_of(d, "#tasks tbody tr:first-child a") == "among-many")  # live, filtered
    assert text_of(browser, "#running-count") == "执行中 1"
    client.request("PUT", "/among-many?action=kill")
    until(browser, lambda d: rows() == 0)
    assert console_errors(browser) == []


def test_output_and_feed_resume_after_the_connection_drops(browser: WebDriver, client: Client) -> None:
    script = "i=0; while [ $i -lt 400 ]; do echo line$i; i=$((i+1)); sleep 0.05; done"
    task_id = client.submit([sh(script, name="counter")])
    open_page(browser, client, f"/ui/tasks/{task_id}")
    until(browser, lambda d: "line5\n" in text_of(d, "#log"))
    dropped = drop_connections(client.port)
    assert dropped >= 2  # the feed and the log stream at least
    until(browser, lambda d: "line60\n" in text_of(d, "#log"), timeout=30)
    lines = text_of(browser, "#log").split("\n")[:-1]
    assert lines == [f"line{i}" for i in range(len(lines))]  # resumed at its byte offset: no gap, no repeat
    client.request("PUT", f"/{task_id}?action=kill")
    until(browser, lambda d: text_of(d, "#task-state") == "已终止")  # the feed is back too
    assert console_errors(browser, allowed=("ERR_INCOMPLETE_CHUNKED_ENCODING", "ERR_EMPTY_RESPONSE")) == []


def drop_connections(port: int) -> int:
    """Cut every connection this process serves on `port`, as a broken network would (FIN both ways)."""
    cut = 0
    for conn in psutil.Process().net_connections("tcp"):
        if conn.laddr.port == port and conn.status == psutil.CONN_ESTABLISHED and conn.fd >= 0:
            with socket.socket(fileno=os.dup(conn.fd)) as sock:  # a duplicate: the server's own fd stays
                sock.shutdown(socket.SHUT_RDWR)
            cut += 1
    return cut


def test_dates_are_shown_in_the_browsers_time_zone(client: Client) -> None:
    task_id = client.submit([sh("true")], "?id=zoned")
    client.wait(task_id)
    begin = datetime.fromisoformat(client.get("/").json["data"]["tasks"][0]["times"]["begin"])
    driver = launch(tz="Asia/Kathmandu")  # +05:45 all year: no server zone shares it by chance
    try:
        open_page(driver, client)
        shown = until(driver, lambda d: text_of(d, "#tasks tr[data-id='zoned'] td:nth-child(4)"))
        expected = begin.astimezone(timezone(timedelta(hours=5, minutes=45)))
        assert shown == expected.strftime("%Y/%m/%d %H:%M:%S").replace("/0", "/")
    finally:
        driver.quit()


def test_an_expired_task_leaves_the_list(browser: WebDriver, make_server) -> None:
    client = make_server(key_expire="3s")  # long enough to be seen, short enough to wait for
    open_page(browser, client)
    client.submit([sh("true")], "?id=short-lived")
    until(browser, lambda d: text_of(d, "#tasks tr[data-id='short-lived'] .state") == "已结束")
    assert wait_until(lambda: client.get("/short-lived").status == 404, timeout=10)
    client.submit([sh("true")], "?id=next-one")  # any change renders the list again
    until(browser, lambda d: text_of(d, "#tasks tr[data-id='next-one'] .state") == "已结束")
    assert text_of(browser, "#tasks tr[data-id='short-lived']") == ""
