#!/usr/bin/env python3
"""osreapi benchmark: every figure next to the cost of starting a process, measured in the same run.

    osreapi-bench            # full run (a few minutes on 2 cores); also python tools/bench.py
    osreapi-bench --quick    # reduced counts: a smoke test of the harness
    osreapi-bench --url http://127.0.0.1:2376   # an already running server (no RSS figures)

Prints one JSON line per figure, then a table. Talks only to the server it starts (127.0.0.1) or --url.
Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from .bench_reference import lean_loop_rate

TRUE_STEP = {"command_type": "sh", "command_content": "true"}
DEADLINE = 600.0  # no phase may run longer than this


class Http:
    """One keep-alive connection."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def submit(self, steps: list, query: str = "") -> str:
        status, body = self.call("POST", "/" + query, steps)
        if status != 200:
            raise RuntimeError(f"submit answered {status}: {body[:200]!r}")
        return json.loads(body)["data"]["id"]

    def code(self, task_id: str, query: str = "") -> int:
        return json.loads(self.call("GET", f"/{task_id}{query}")[1])["code"]

    def wait(self, task_id: str, interval: float | None = None, limit: float = 120.0) -> int:
        """The task's final code. interval None: GET /<id>?wait= (answered when the task ends; a
        server that answers at once is polled every 2 ms); else poll every `interval` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            asked = time.monotonic()
            code = self.code(task_id, "?wait=30s" if interval is None else "")
            if code != 1001:
                return code
            if interval is not None or time.monotonic() - asked < 1.0:
                time.sleep(interval or 0.002)
        raise TimeoutError(f"task {task_id} not done after {limit}s")

    def close(self) -> None:
        self.conn.close()


class Server:
    def __init__(self, pool_size: int, parent: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="osreapi-bench-", dir=parent))
        script = shutil.which("osreapi", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        if not script:
            sys.exit("osreapi is not installed (pip install .)")
        self.proc = subprocess.Popen(
            [script, "run", "--addr", "127.0.0.1:0", "--data_dir", str(self.dir / "data"), f"--pool_size={pool_size}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        line = self.proc.stdout.readline().decode()
        match = re.search(r"listening on (http://\S+)", line)
        if not match:
            self.proc.kill()
            sys.exit(f"server did not start: {line!r}")
        self.url = match.group(1)
        import psutil

        self.ps = psutil.Process(self.proc.pid)
        self.peak_rss = 0
        self.peak_threads = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak_rss = max(self.peak_rss, self.ps.memory_info().rss)
                self.peak_threads = max(self.peak_threads, self.ps.num_threads())
            except Exception:
                return

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 1e6

    def reset_peaks(self) -> None:
        self.peak_rss = self.ps.memory_info().rss
        self.peak_threads = self.ps.num_threads()

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


BARE_SERVER = """
import json, sys
import bottle
from cheroot import wsgi

app = bottle.Bottle()

@app.get("/<task_id>")
def get(task_id):
    bottle.response.content_type = "application/json; charset=utf-8"
    return json.dumps({"code": 0, "message": "成功", "data": [{"step": 0, "name": task_id}]}, ensure_ascii=False)

server = wsgi.Server(("127.0.0.1", 0), app, numthreads=32)
server.prepare()
print(server.bind_addr[1], flush=True)
server.serve()
"""


class BareServer:
    """A bare Bottle handler on cheroot (same thread count as ours): the framework's ceiling."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wrk_rate(url: str, seconds: int) -> float:
    """Requests per second wrk measures (2 threads, 8 connections) on one URL."""
    out = subprocess.run(["wrk", "-t2", "-c8", f"-d{seconds}s", url], capture_output=True, text=True,
                         timeout=seconds + 60)
    match = re.search(r"Requests/sec:\s*([0-9.]+)", out.stdout)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    if re.search(r"Non-2xx or 3xx responses", out.stdout):
        raise RuntimeError(f"wrk saw errors on {url}: {out.stdout[-500:]}")
    return float(match.group(1))


def wrk_figures(report: "Report", url: str, task_id: str, seconds: int) -> None:
    """GET /<id> and GET /healthz beside the bare ceiling, measured in turns (best of two rounds,
    so that a neighbour's burst on a shared machine does not decide the ratio)."""
    if shutil.which("wrk") is None:
        report.add("wrk: skipped (wrk is not installed; apt-get install wrk)", 0, "")
        return
    bare = BareServer()
    try:
        targets = {"bare": f"{bare.url}/{task_id}", "get": f"{url}/{task_id}", "healthz": f"{url}/healthz"}
        best = dict.fromkeys(targets, 0.0)
        for _ in range(2):
            for name, target in targets.items():
                best[name] = max(best[name], wrk_rate(target, seconds))
    finally:
        bare.stop()
    report.add("wrk: bare Bottle-on-cheroot handler (ceiling)", best["bare"], "req/s")
    for name, figure in (("get", "wrk: GET /<id> of a finished task"), ("healthz", "wrk: GET /healthz")):
        share = best[name] / best["bare"]
        report.add(figure, best[name], "req/s", "≥ 90% of bare", of_bare=f"{share:.0%}")


class Report:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.floor_ms: float | None = None
        self.flush_ms = 0.0
        self.fork_rate = 0.0

    def add(self, name: str, value: float, unit: str, target: str = "", ratio: bool = False, **extra) -> None:
        row = {"figure": name, "value": round(value, 3), "unit": unit}
        if ratio and self.floor_ms:
            row["x_floor"] = round(value / self.floor_ms, 2)
        if target:
            row["target"] = target
        row.update(extra)
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    def table(self) -> str:
        lines = ["| figure | value | × floor | share of limit | target |", "|---|---|---|---|---|"]
        for row in self.rows:
            value = f"{row['value']:g} {row['unit']}"
            share = row.get("of_ceiling") or row.get("of_bare") or row.get("of_floors") or ""
            lines.append(f"| {row['figure']} | {value} | {row.get('x_floor', '')} | {share} | {row.get('target', '')} |")
        return "\n".join(lines)


def median_ms(fn: Callable[[], object], count: int) -> tuple[float, float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))]


POLL_INTERVAL = 0.1  # seconds between two polls of one polling client


def fork_rate(seconds: float, threads: int = 8) -> float:
    """How many `sh -c true` processes this box starts and reaps per second from `threads` threads:
    the ceiling of any executor of sh steps here."""
    deadline = time.perf_counter() + seconds

    def work(_: int) -> int:
        runs = 0
        while time.perf_counter() < deadline:
            subprocess.run(["sh", "-c", "true"])
            runs += 1
        return runs

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(work, range(threads)))
    return total / (time.perf_counter() - start)


def throughput(url: str, tasks: int, pollers: int) -> float:
    """3-step `true` tasks per second from 8 submitters, while `pollers` clients each list the tasks
    and read the newest one ten times a second (a busy dashboard or orchestrator)."""
    done = threading.Event()

    def poll() -> None:
        client = Http(url)
        while not done.wait(POLL_INTERVAL):
            status, body = client.call("GET", "/")
            listed = json.loads(body)["data"]["tasks"] if status == 200 else []
            if listed:
                client.call("GET", f"/{listed[-1]['id']}")
        client.close()

    def submitter(n: int) -> None:
        client = Http(url)
        mine = [client.submit([TRUE_STEP] * 3) for _ in range(n)]
        for task_id in mine:
            client.wait(task_id)
        client.close()

    polling = [threading.Thread(target=poll) for _ in range(pollers)]
    for thread in polling:
        thread.start()
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(submitter, [tasks // 8 + (1 if i < tasks % 8 else 0) for i in range(8)]))
        return tasks / (time.perf_counter() - start)
    finally:
        done.set()
        for thread in polling:
            thread.join(30)


def fill(url: str, count: int, clients: int) -> list[str]:
    """Submit `count` one-step tasks from `clients` threads; wait for all; return their ids."""
    ids: list[str] = []
    lock = threading.Lock()
    per_client = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]

    def work(n: int) -> None:
        http = Http(url)
        mine = [http.submit([TRUE_STEP]) for _ in range(n)]
        for task_id in mine:
            http.wait(task_id)
        http.close()
        with lock:
            ids.extend(mine)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, per_client))
    return ids


@dataclass
class Run:
    """One benchmark run: where its figures go and what it measures."""

    report: Report
    url: str
    http: Http
    server: Server | None
    quick: bool
    data_parent: Path  # where temporary data dirs go (the file system of the default data dir)


def run(args: argparse.Namespace) -> Report:
    report = Report()
    Path(args.data_parent).mkdir(parents=True, exist_ok=True)  # ~/.cache may not exist yet
    # Every temporary dir goes under one, removed at the end: on ext4 without a journal, files made
    # soon after thousands were deleted cost several times more to create (the inode allocator
    # skips recently deleted inodes one by one), so a phase that removed its files before the next
    # one measured it ~5% slower.
    parent = Path(tempfile.mkdtemp(prefix="osreapi-bench-run-", dir=args.data_parent))
    try:
        return _measure(args, report, parent)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _measure(args: argparse.Namespace, report: Report, parent: Path) -> Report:
    measure_limits(report, args.quick)
    measure_flush(report, parent, args.quick)
    server = None if args.url else Server(args.pool_size, parent)
    url = args.url or server.url
    bench = Run(report, url, Http(url), server, args.quick, parent)
    try:
        if server:
            time.sleep(0.5)  # let start-up settle before reading its memory
            report.add("memory: RSS idle", server.rss_mb(), "MB", "≤ 30 MB")
        measure_engine(bench)
        measure_reads(bench)
        measure_burst(bench)
    finally:
        bench.http.close()
        if server:
            server.stop()
    return report


def measure_limits(report: Report, quick: bool) -> None:
    """The floor (one process started and reaped) and the fork-rate ceiling of this box."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.sh"
        script.write_text("true\n")
        floor, _ = median_ms(lambda: subprocess.run(["sh", "-c", "true"]), 20 if quick else 100)
        floor_script, _ = median_ms(lambda: subprocess.run(["sh", str(script)]), 20 if quick else 100)
    report.floor_ms = floor
    report.add("floor: sh -c true", floor, "ms")
    report.add("floor: sh script.sh", floor_script, "ms")
    report.fork_rate = fork_rate(1.0 if quick else 3.0)
    report.add("ceiling: sh -c true runs per second, 8 threads", report.fork_rate, "runs/s")


def measure_flush(report: Report, parent: Path, quick: bool) -> None:
    """The floor of one durable write on the data dir's file system: a 4 KiB page rewritten and
    fdatasync'ed. A one-step task waits for two (its acceptance with its step's start, its end): on
    a disk where one costs 1.4 ms, no engine meets a 3 ms latency; the figure says which disk it was."""
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        fd = os.open(Path(tmp) / "page", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, bytes(4096), 0)
            os.fsync(fd)
            page = os.urandom(4096)
            flush, _ = median_ms(lambda: (os.pwrite(fd, page, 0), os.fdatasync(fd)), 20 if quick else 100)
        finally:
            os.close(fd)
    report.flush_ms = flush
    report.add("floor: a 4 KiB write made durable (fdatasync) in the data dir's file system", flush, "ms")


def measure_engine(run: Run) -> None:
    """Latency, cost per step, throughput (alone and beside pollers), a parallel task."""
    report, http, url, quick = run.report, run.http, run.url, run.quick
    # latency: the end learnt from GET /<id>?wait= (one request), and by polling every 2 ms
    http.wait(http.submit([TRUE_STEP]))  # warm up
    med, p95 = median_ms(lambda: http.wait(http.submit([TRUE_STEP])), 10 if quick else 50)
    report.add("latency: 1-step true, submit→done (median)", med, "ms", "≤ 3 ms", ratio=True,
               # the task stored with its step's start, then its end (an id the engine made)
               of_floors=f"{med / (report.floor_ms + 2 * report.flush_ms):.2f}× (sh floor + 2 durable writes)")
    report.add("latency: 1-step true, submit→done (p95)", p95, "ms", ratio=True)
    med, _ = median_ms(lambda: http.wait(http.submit([TRUE_STEP]), interval=0.002), 10 if quick else 50)
    report.add("latency: the same, polling GET /<id> every 2 ms (median)", med, "ms", ratio=True)

    # step overhead
    steps = 11 if quick else 41
    runs = 3 if quick else 7
    one, _ = median_ms(lambda: http.wait(http.submit([TRUE_STEP])), runs)
    many, _ = median_ms(lambda: http.wait(http.submit([TRUE_STEP] * steps)), runs)
    report.add("step overhead: cost per extra sequential step", (many - one) / (steps - 1), "ms", "≤ 2× floor", ratio=True)

    # throughput, alone and with pollers (a dashboard or orchestrator polling must not halve it)
    tasks = int(300 * (0.1 if quick else 1.0))
    ceiling = report.fork_rate / 3  # a 3-step task cannot beat a third of the fork rate
    lean = lean_loop_rate(run.data_parent, tasks * 2)
    if lean is not None:
        report.add("reference: one Python thread running 3-step tasks, durable starts, no server", lean, "tasks/s",
                   of_ceiling=f"{lean / ceiling:.0%}")
    for pollers in (0, 2):
        rate = throughput(url, tasks, pollers)
        name = "throughput: 3-step tasks, 8 submitters" + (f", {pollers} polling clients" if pollers else "")
        shares = f"{rate / ceiling:.0%}" + (f" (of the lean thread: {rate / lean:.0%})" if lean else "")
        report.add(name, rate, "tasks/s", "≥ 50% of fork ceiling / 3", of_ceiling=shares)

    # parallel
    start = time.perf_counter()
    task_id = http.submit([{"command_type": "sh", "command_content": "sleep 0.5"}] * 20, "?async=true")
    http.wait(task_id)
    report.add("parallel: 20 × sleep 0.5, async", time.perf_counter() - start, "s", "≤ 0.55 s")


def measure_reads(run: Run) -> None:
    """Listing, GET /<id> from Python clients and with wrk, at 1,000 stored tasks."""
    report, http, url, server, quick = run.report, run.http, run.url, run.server, run.quick
    # list and get at 1,000 stored tasks
    stored = len(json.loads(http.call("GET", "/")[1])["data"]["tasks"])
    target_list = 100 if quick else 1000
    if stored < target_list:
        fill(url, target_list - stored, 8)
    med, _ = median_ms(lambda: http.call("GET", "/"), 10 if quick else 30)
    size = len(http.call("GET", "/")[1])
    report.add(f"list: GET / with {target_list} tasks", med, "ms", "≤ 15 ms at 1,000", bytes=size)
    if server:
        report.add(f"memory: RSS after {target_list} tasks", server.rss_mb(), "MB", "≤ 60 MB at 1,000")

    # get
    finished = json.loads(http.call("GET", "/")[1])["data"]["tasks"][0]["id"]
    duration = 1.0 if quick else 3.0
    counts: list[int] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def getter() -> None:
        client = Http(url)
        n = 0
        mine = []
        end = time.perf_counter() + duration
        while time.perf_counter() < end and n < 1_000_000:
            t0 = time.perf_counter()
            client.call("GET", f"/{finished}")
            mine.append((time.perf_counter() - t0) * 1000)
            n += 1
        client.close()
        with lock:
            counts.append(n)
            latencies.extend(mine)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: getter(), range(8)))
    report.add("get: GET /<id>, 8 keep-alive clients", sum(counts) / duration, "req/s", "≥ 3,000 req/s",
               median_ms=round(statistics.median(latencies), 3))

    wrk_figures(report, url, finished, 2 if quick else 5)


def measure_burst(run: Run) -> None:
    """10,000 one-step tasks at once: none lost, threads and memory bounded."""
    report, http, url, server, quick = run.report, run.http, run.url, run.server, run.quick
    # burst
    burst = 1000 if quick else 10_000
    if server:
        server.reset_peaks()
    start = time.perf_counter()
    burst_ids = fill(url, burst, 8)
    drained = time.perf_counter() - start
    codes = {}
    for task_id in burst_ids[:: max(1, len(burst_ids) // 200)]:
        code = http.code(task_id)
        codes[code] = codes.get(code, 0) + 1
    listed = json.loads(http.call("GET", "/")[1])["data"]
    lost = burst - len(set(burst_ids) & {t["id"] for t in listed["tasks"]})
    report.add(f"burst: {burst} one-step tasks, 8 clients, drain", drained, "s", "all complete, none lost",
               lost=lost, sampled_codes=codes)
    if server:
        report.add("burst: peak threads", server.peak_threads, "threads", "constant + pool")
        report.add("burst: peak RSS", server.peak_rss / 1e6, "MB", "≤ 150 MB")
    med, _ = median_ms(lambda: http.call("GET", "/"), 3 if quick else 10)
    report.add(f"list: GET / with {listed['total']} tasks", med, "ms", "linear", bytes=len(http.call("GET", "/")[1]))
    if server:
        report.add("memory: peak RSS", server.peak_rss / 1e6, "MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced counts (a smoke test of the harness)")
    parser.add_argument("--url", help="benchmark a running server instead of starting one")
    parser.add_argument("--pool-size", type=int, default=30)
    parser.add_argument(
        "--data-parent",
        default=str(Path.home() / ".cache"),
        help="where the temporary data dir goes (default ~/.cache: the file system of the default data dir)",
    )
    args = parser.parse_args(argv)
    timer = threading.Timer(DEADLINE, lambda: os._exit(3))  # bounded: never hangs a CI run
    timer.daemon = True
    timer.start()
    report = run(args)
    print()
    print(report.table())
    timer.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
