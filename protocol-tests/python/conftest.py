"""Fixtures: the Halley broker process and the Node echo peer, both bounded in time."""
import json
import os
import pathlib
import queue
import re
import shutil
import subprocess
import threading
import time
import urllib.parse

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
NODE_DIR = HERE.parent / "node"
CLUSTER_DIR = HERE.parent / "cluster"
HALLEY_BIN = os.environ.get("HALLEY_BIN") or str(REPO_ROOT / "target" / "release" / "halley")
STARTUP_TIMEOUT = 10.0
LISTEN_RE = re.compile(r"listening on (http://\S+)")


class Process:
    """A child process whose stdout lines are queued and whose whole output is kept."""

    def __init__(self, name, argv, stdin=subprocess.DEVNULL, cwd=None):
        self.name = name
        self.argv = argv
        self.log = []
        self.lines = queue.Queue()
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=cwd)
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream, is_stdout):
        for line in stream:
            self.log.append(line)
            if is_stdout:
                self.lines.put(line)
        if is_stdout:
            self.lines.put(None)

    def wait_line(self, pattern, timeout):
        """Return the match of the first stdout line matching `pattern`, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no line matching {pattern!r} within {timeout}s;"
                                     f" output so far:\n{self.output()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=5)
                raise AssertionError(f"{self.name} exited (code {self.proc.returncode}) before printing"
                                     f" {pattern!r}; output:\n{self.output()}")
            match = re.search(pattern, line)
            if match:
                return match

    def next_line(self, timeout):
        """The next stdout line (without its newline) within `timeout` seconds, or None if there is none
        by then (or the process closed its stdout)."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is None:
            self.lines.put(None)  # keep reporting the end of the stream
            return None
        return line.rstrip("\n")

    def output(self):
        return "".join(self.log)

    def stop(self, kill=False):
        if self.proc.poll() is None:
            if self.proc.stdin:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        elif self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture
def processes(request):
    """Every process started by a test; all stopped at teardown, outputs shown if the test failed."""
    started = []
    yield started
    for process in reversed(started):
        process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        for process in started:
            print(f"\n===== {process.name} output =====\n{process.output()}===== end {process.name} =====")


class Broker:
    """A running broker; restart() replaces the process by a new one on the same port."""

    def __init__(self, processes, extra_args):
        self._processes = processes
        self._extra_args = list(extra_args)
        self.url = self._spawn("127.0.0.1:0")
        self.port = urllib.parse.urlsplit(self.url).port

    def _spawn(self, listen):
        process = Process("halley", [HALLEY_BIN, "--listen", listen, *self._extra_args])
        self._processes.append(process)
        self.process = process
        return process.wait_line(LISTEN_RE, STARTUP_TIMEOUT).group(1)

    def restart(self, kill=False):
        """Stop the broker (SIGTERM, or SIGKILL if `kill`): all sessions are forgotten; start a new one
        on the same port."""
        self.process.stop(kill=kill)
        url = self._spawn(f"127.0.0.1:{self.port}")
        assert url == self.url, f"restarted broker reports {url}, expected {self.url}"


@pytest.fixture
def start_broker(processes):
    """start_broker(*extra_args) -> Broker on 127.0.0.1 with an OS-chosen port (.url, .restart())."""
    def start(*extra_args):
        if not os.path.exists(HALLEY_BIN):
            pytest.fail(f"broker binary not found: {HALLEY_BIN} (build it or set HALLEY_BIN)")
        return Broker(processes, extra_args)
    return start


@pytest.fixture
def start_echo_peer(processes):
    """start_echo_peer(url): run node ../node/echo-peer.mjs URL and wait until it prints `ready`."""
    def start(url):
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is not installed")
        if not (NODE_DIR / "node_modules" / "cometd").is_dir():
            pytest.fail(f"{NODE_DIR}/node_modules is missing: run `npm ci` there (run.sh does it)")
        process = Process("echo-peer", [node, str(NODE_DIR / "echo-peer.mjs"), url],
                          stdin=subprocess.PIPE, cwd=str(NODE_DIR))
        processes.append(process)
        process.wait_line(r"^ready\s*$", 15.0)
        return process
    return start


@pytest.fixture
def halley_bin():
    """Path of the broker binary ($HALLEY_BIN or <repo>/target/release/halley), also used as a CLI client."""
    if not os.path.exists(HALLEY_BIN):
        pytest.fail(f"broker binary not found: {HALLEY_BIN} (build it or set HALLEY_BIN)")
    return HALLEY_BIN


@pytest.fixture
def start_subscriber(processes):
    """start_subscriber(url, channel): run node ../node/subscriber.mjs URL CHANNEL and wait until it prints
    `ready`; afterwards each of its stdout lines is one received message as JSON (Process.next_line)."""
    def start(url, channel):
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is not installed")
        if not (NODE_DIR / "node_modules" / "cometd").is_dir():
            pytest.fail(f"{NODE_DIR}/node_modules is missing: run `npm ci` there (run.sh does it)")
        process = Process("subscriber", [node, str(NODE_DIR / "subscriber.mjs"), url, channel],
                          stdin=subprocess.PIPE, cwd=str(NODE_DIR))
        processes.append(process)
        process.wait_line(r"^ready\s*$", 15.0)
        return process
    return start


@pytest.fixture
def start_cluster(processes):
    """start_cluster(name, *broker_flags) -> dict with url (Bayeux through HAProxy), origin, nodeUrls, prefix:
    redis-server, three Halley nodes on the Redis engine and HAProxy (round-robin, no stickiness), started by
    ../cluster/launch.mjs and stopped with the test (HALLEY_CLUSTER_ENGINE=memory: one memory node)."""
    def start(name, *flags):
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is not installed")
        if not (NODE_DIR / "node_modules" / "cometd").is_dir():
            pytest.fail(f"{NODE_DIR}/node_modules is missing: run `npm ci` there (run.sh does it)")
        process = Process("cluster", [node, str(CLUSTER_DIR / "launch.mjs"), name, *flags],
                          stdin=subprocess.PIPE, cwd=str(CLUSTER_DIR))
        processes.append(process)
        return json.loads(process.wait_line(r"^ready (.*)$", 30.0).group(1))
    return start
