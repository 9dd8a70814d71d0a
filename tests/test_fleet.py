"""Fleets: several real servers on 127.0.0.1 ports, one stopped and one that accepts connections
and never answers; each host's trouble is its own row and costs only its own timeout."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from osreapi.client import ConnectionFailed, Fleet
from osreapi.client.fleet import host_url, parse_hosts
from osreapi.errors import NotFound
from osreapi.vocabulary import State

from .conftest import sh
from .test_client import LoopbackListener
from .test_client_cli import osreapi


@dataclass
class Hosts:
    healthy: list[str]
    stopped: str
    slow: str

    @property
    def all(self) -> list[str]:
        return [*self.healthy, self.stopped, self.slow]


@pytest.fixture
def hosts(make_server, tmp_path: Path) -> Iterator[Hosts]:
    healthy = [f"127.0.0.1:{make_server(data_dir=tmp_path / f'data{i}').port}" for i in range(3)]
    with socket.socket() as closed:  # a port nothing listens on: a stopped server
        closed.bind(("127.0.0.1", 0))
        stopped = f"127.0.0.1:{closed.getsockname()[1]}"
    silent = LoopbackListener()  # accepts connections and never answers
    yield Hosts(healthy, stopped, f"127.0.0.1:{silent.port}")
    silent.close()


def test_host_names_and_lists():
    assert host_url("web1") == "http://web1:2376"
    assert host_url("web1:8080", "https") == "https://web1:8080"
    assert host_url("::1") == "http://[::1]:2376" and host_url("[::1]:9") == "http://[::1]:9"
    assert host_url("https://h:1/") == "https://h:1"
    assert parse_hosts("a, b\n# comment\nc # d\na") == ["a", "b", "c"]


def test_fleet_submit_and_wait_with_a_down_and_a_hung_host(hosts: Hosts):
    finished: dict[str, float] = {}
    with Fleet(hosts.all, timeout=3) as fleet:

        def submit(host, client):
            try:
                return client.submit([sh("echo $OSREAPI_TASK_ID")], task_id="everywhere")
            finally:
                finished[host] = time.monotonic()

        submitted = fleet.map(submit)
        assert [r.host for r in submitted] == hosts.all  # rows in the order given
        assert [r.value for r in submitted[:3]] == ["everywhere"] * 3
        assert all(isinstance(r.error, ConnectionFailed) for r in submitted[3:])
        # The hung host cost only its own timeout: every healthy host had answered before it gave up.
        assert max(finished[h] for h in hosts.healthy) < finished[hosts.slow]
        waited = fleet.wait("everywhere", timeout=20)
        assert [r.value.steps[0].output for r in waited[:3]] == ["everywhere\n"] * 3
        assert all(r.value.task.state is State.STOPPED for r in waited[:3])
        assert [type(r.error) for r in waited[3:]] == [ConnectionFailed, ConnectionFailed]
        again = fleet.submit([sh("echo $OSREAPI_TASK_ID")], task_id="everywhere")
        assert [r.value for r in again[:3]] == ["everywhere"] * 3  # idempotent per host


def test_fanout_of_one_still_reaches_every_host(hosts: Hosts):
    with Fleet(hosts.healthy + [hosts.stopped], fanout=1, timeout=3) as fleet:
        results = fleet.submit([sh("true")])
        ids = {r.host: r.value for r in results if r.ok}
        assert len(ids) == 3 and len(set(ids.values())) == 3  # each host named its own task
        waited = fleet.wait(ids, timeout=20)
        assert [r.value.task.succeeded for r in waited[:3]] == [True] * 3
        assert isinstance(waited[3].error, NotFound)  # the stopped host never got a task


def test_cli_fleet_rows_json_and_exit_statuses(hosts: Hosts, tmp_path: Path):
    url = "http://127.0.0.1:9"  # only the scheme is taken from --url with --hosts
    common = ["--request_timeout", "2s", "--lang", "en"]
    all_hosts = ",".join(hosts.all)
    mixed = osreapi(url, "submit", "-e", "echo hi", "--hosts", all_hosts, "--wait", "--id", "fleet-1", *common)
    assert mixed.returncode == 1
    rows = {line.split()[0]: line for line in mixed.stdout.splitlines()[1:]}
    assert set(rows) == set(hosts.all)
    assert all("fleet-1" in rows[h] and "stopped" in rows[h] for h in hosts.healthy)
    assert "ConnectError" in rows[hosts.stopped] and "Timeout" in rows[hosts.slow]
    assert rows[hosts.stopped].split()[1] == "fleet-1"  # the id asked for, on a host that did not answer too

    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("# the healthy ones\n" + "\n".join(hosts.healthy) + "\n")
    healthy = osreapi(url, "get", "fleet-1", "--hosts_file", str(hosts_file), "--json", *common)
    assert healthy.returncode == 0
    objects = [json.loads(line) for line in healthy.stdout.splitlines()]
    assert [o["host"] for o in objects] == hosts.healthy
    assert all(o["code"] == 0 and o["data"][0]["message"] == "hi\n" for o in objects)

    gate = tmp_path / "gate"
    long = osreapi(url, "submit", "-e", f"while [ ! -e {gate} ]; do sleep 0.01; done", "--hosts_file",
                   str(hosts_file), "--id", "fleet-2", *common)
    assert long.returncode == 0 and long.stdout.count("fleet-2") == 3
    timed_out = osreapi(url, "wait", "fleet-2", "--hosts_file", str(hosts_file), "--timeout", "200ms", *common)
    assert timed_out.returncode == 124
    # The kill goes to one host and a stopped one (tasks of one id on several servers of one machine
    # would share their process marker: a real fleet has one server per host).
    alone = osreapi(url, "submit", "-e", "exec sleep 300", "--hosts", hosts.healthy[0], "--id", "alone", *common)
    assert alone.returncode == 0
    killed = osreapi(url, "kill", "alone", "--hosts", f"{hosts.healthy[0]},{hosts.stopped}", "--json", *common)
    answers = [json.loads(line) for line in killed.stdout.splitlines()]
    assert killed.returncode == 1 and answers[0] == {"host": hosts.healthy[0], "code": 0, "message": "success"}
    assert answers[1]["host"] == hosts.stopped and "ConnectError" in answers[1]["error"]
    gate.touch()
    rest = osreapi(url, "wait", "fleet-2", "--hosts_file", str(hosts_file), "--timeout", "20s", *common)
    assert rest.returncode == 0 and rest.stdout.count("stopped") == 3
    row = osreapi(url, "get", "alone", "--hosts", hosts.healthy[0], *common).stdout.splitlines()[1].split()
    assert row[:3] == [hosts.healthy[0], "alone", "killed"]
