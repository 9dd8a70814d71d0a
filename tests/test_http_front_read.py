"""The read path's shortcuts keep every answer true: a finished task's cached body (fresh ttl, gone
with the task), and the shared health check (a failure is never hidden for long)."""

from __future__ import annotations

import threading
import time

from osreapi.errors import EngineBusy
from osreapi.http.health import HealthCheck

from .conftest import sh, wait_until


def test_a_finished_task_answers_the_same_body_with_a_fresh_ttl(make_server):
    shift = [0.0]
    client = make_server(clock=lambda: time.time() + shift[0])
    task_id = client.submit([sh("echo one"), sh("echo two")])
    first = client.wait(task_id).json
    again = client.get(f"/{task_id}").json  # served from the cache
    shift[0] = 3600.0
    later = client.get(f"/{task_id}").json
    english = client.get(f"/{task_id}?lang=en").json
    ttls = [[step["times"].pop("ttl") for step in body["data"]] for body in (first, again, later)]
    assert ttls[2][0].startswith("46h59m") and ttls[2][0] == ttls[2][1]  # an hour less than --key_expire
    assert ttls[0][0].startswith("47h59m") and ttls[1][0].startswith("47h59m")
    assert first == again == later
    assert english["message"] == "success" and english["data"][0]["state"] == "stopped"
    shift[0] = 49 * 3600.0  # past expiry: unknown, cache or not
    assert client.get(f"/{task_id}").status == 404


def test_a_deleted_task_is_not_served_from_the_cache_and_its_id_is_reusable(client):
    client.wait(client.submit([sh("echo first")], "?id=same"))
    assert client.get("/same").json["data"][0]["message"] == "first\n"
    assert client.request("DELETE", "/same").status == 200
    assert client.get("/same").status == 404
    client.wait(client.submit([sh("echo second")], "?id=same"))
    assert client.get("/same").json["data"][0]["message"] == "second\n"


def test_health_probes_share_one_check_and_a_failure_reaches_every_waiter():
    calls, release = [], threading.Event()

    def slow_check() -> None:
        calls.append(1)
        release.wait(5)
        raise EngineBusy("the engine did not answer")

    health = HealthCheck(slow_check, max_age=0.1)
    errors: list[BaseException] = []

    def probe() -> None:
        try:
            health()
        except EngineBusy as exc:
            errors.append(exc)

    probes = [threading.Thread(target=probe) for _ in range(5)]
    for thread in probes:
        thread.start()
    assert wait_until(lambda: len(calls) == 1)
    release.set()
    for thread in probes:
        thread.join(5)
    assert len(errors) == 5 and len(calls) <= 5
    passed = HealthCheck(lambda: calls.append(2) or "ok", max_age=60)
    assert passed() == passed() == "ok"
    assert calls.count(2) == 1  # a passed check, and what it said, stand for max_age


def test_healthz_turns_503_once_the_engine_is_closed(client):
    assert client.get("/healthz").status == 200
    client.executor.close()
    assert wait_until(lambda: client.get("/healthz").status == 503, timeout=2)
