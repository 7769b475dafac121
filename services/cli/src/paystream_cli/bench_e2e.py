"""`paystream bench e2e`: the whole stack measured as a user would see it.

Load. An open loop: request i leaves at start + i / rate whether or not earlier requests
were answered, so a slow stack shows up as latency instead of quietly lowering the rate
(a closed loop would wait for answers and measure its own queue). It is a raw HTTP/1.1
keep-alive client on asyncio with a pool that opens another connection whenever none is
free; how late each request was written compared with its schedule is reported ("max
schedule lag"): if that grows, the generator itself fell behind and the figures are void.
Requests are `POST /v1/deposits` round-robin over the six demo countries ("10.00",
`pm_card_visa`, which every first gateway accepts at once) over 500 accounts, each with a
fresh Idempotency-Key; `--withdrawals F` turns that fraction into `POST /v1/withdrawals`
of "1.00" from accounts the warm-up funded, so they succeed too.

Latency. "POST" is writing the request to reading the answer. "End to end" is writing the
request to reading that transaction's terminal outcome event (succeeded, failed or
rejected) on `<prefix>.outcomes`, read by a consumer thread in this process with a 25 ms
fetch wait (the embedded broker answers a fetch only when `fetch.wait.max.ms` expires; a
shorter wait made the reader's fetches a fifth of the broker's CPU at 50/s).
"Accepted" is a 202. "Lost" is accepted without a terminal outcome within `--drain-s`
after the last answer: it may still finish later, but not as a user would expect.

CPU. psutil user+system CPU time of every process, sampled twice a second: the process
tree of `paystream dev` (each child classified by its command line; a process without a
recognisable command line belongs to its parent's group, e.g. PostgreSQL backends to the
postmaster), extra gateway workers, and this process (the load generator, with its
consumer and sampler threads). A window's figure per process is its last sample minus its
sample at the start of the window; a process that appears during the window counts from
zero, one that exits counts up to its last sample. The load window runs from the first
request to the moment the last accepted request's outcome arrived (or the drain deadline).
CPU is reported as % of one core, as idle % (measured before the load over `--idle-s`),
and as CPU milliseconds per completed (terminal) payment. The "paystream services total"
is ingest API, gateway worker(s), callback ingress, callback worker, reconciler and relay:
what a deployment of paystream runs, without the sandbox (the providers), the broker, the
database, the dev supervisor and the load generator, which "everything" adds. The
machine's own counters add kernel interrupt time (charged to no process) and "other
processes" (anything outside the stack: a test suite running meanwhile shows up there;
within a few % of a core of zero, either way, is the kernel accounting per-process time
and the machine's counters differently).

Sequence. Stack up (or attached), extra gateway workers holding partitions, outcome
consumer assigned; 20 warm-up deposits at 5/s waited for until terminal and until their
provider callbacks stopped for a second (group joins, lazy clients and connection pools
are done before the clock starts; they also fund the withdrawal accounts); idle CPU;
then one run, or with `--find-max` steps from `--rate` up by `--step-factor`, each
drained before the next, until a step fails (end-to-end p99 over `--max-p99-ms`,
terminal/s more than 5% below the offered rate, anything lost or any non-202) or the
next step would exceed `--max-requests` (the embedded broker keeps every record in
memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn

import psutil
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from paystream_cli.bench_pg_clients import PgClients
from paystream_cli.bench_stack import private_env, start_dev
from paystream_cli.bench_worker import CURRENCY
from paystream_devinfra import free_port
from paystream_keyring import DEV_KEYRING_FILE, read_keyring_file

# The six demo countries `paystream dev` seeds, each with its currency.
COUNTRIES = list(CURRENCY)

TERMINAL = frozenset({"succeeded", "failed", "rejected"})
ACCOUNTS = 500
DEPOSIT_AMOUNT = "10.00"
WITHDRAWAL_UNITS = 1  # whole currency units
WITHDRAWAL_AMOUNT = f"{WITHDRAWAL_UNITS}.00"
DESTINATION = {"holder_name": "Bench Payout", "iban": "DE89370400440532013000"}
# Stripe pays out to a connected account, not an IBAN: bank details there are declined
# and the worker falls back, which would measure the fallback path instead of the happy
# one. GB withdrawals route to Stripe first; the other routes' gateways take bank details.
STRIPE_DESTINATION = {"type": "stripe_account", "account": "acct_1Bench00000"}
STRIPE_COUNTRIES = frozenset({"GB"})
WARMUP_DEPOSITS = 20
WARMUP_RATE = 5.0
WARMUP_DEADLINE_S = 90.0
STACK_START_S = 180.0
WORKER_READY_S = 120.0
READER_READY_S = 60.0
REQUEST_TIMEOUT_S = 30.0
CALLBACKS_QUIET_S = 1.0
# uvicorn closes a keep-alive connection after 5 s idle; reusing one just then would race.
KEEPALIVE_IDLE_S = 4.0
SAMPLE_INTERVAL_S = 0.5
# librdkafka's broker thread sleeps up to a second while every partition is paused, and a
# resume does not wake it: after the idle measurement, the first outcomes of a run were read
# up to ~1 s after they were published (a record produced right after a 12 s pause was read
# after 950-1,000 ms; after 1.2 s of polling, after 2 ms), which made the bench's own
# wake-up the p99 of a 30 s run. The reader polls this long before the load starts.
RESUME_SETTLE_S = 1.2

# (key, title): paystream services first; their sum is "paystream services total".
SERVICE_GROUPS = (
    ("ingest_api", "ingest-api"),
    ("gateway_worker", "gateway worker"),
    ("callback_ingress", "callback-ingress"),
    ("callback_worker", "callback worker"),
    ("reconciler", "reconciler"),
    ("relay", "relay"),
)
OTHER_GROUPS = (
    ("sandbox", "sandbox (providers)"),
    ("broker", "broker (tansu)"),
    ("postgresql", "postgresql"),
    ("dev_supervisor", "dev supervisor"),
    ("load_generator", "load generator"),
)
GROUPS = tuple(key for key, _ in SERVICE_GROUPS + OTHER_GROUPS)
SERVICES_TOTAL = "paystream_services_total"
EVERYTHING = "everything"
# `paystream <args>` -> group; the first match wins.
PAYSTREAM_COMMANDS = (
    (("serve", "ingest-api"), "ingest_api"),
    (("serve", "callback-ingress"), "callback_ingress"),
    (("worker", "gateway"), "gateway_worker"),
    (("worker", "callback"), "callback_worker"),
    (("worker", "reconciler"), "reconciler"),
    (("worker", "relay"), "relay"),
    (("sandbox",), "sandbox"),
    (("dev",), "dev_supervisor"),
)


class BenchError(RuntimeError):
    """The benchmark could not run (stack did not start, warm-up failed, ...)."""


@dataclass(frozen=True)
class Options:
    rate: float = 10.0
    seconds: float = 10.0
    attach: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    gateway_workers: int = 0
    withdrawals: float = 0.0
    drain_s: float = 30.0
    idle_s: float = 10.0
    find_max: bool = False
    step_factor: float = 1.5
    max_p99_ms: float = 1000.0
    max_requests: int = 200_000
    as_json: bool = False


def parse_env(pairs: Iterable[str]) -> dict[str, str]:
    """`--env KEY=VALUE` pairs; ValueError names the first malformed one."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def run(opts: Options) -> int:
    """Run the benchmark; prints tables (or JSON) and returns the exit code."""
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so a private stack is stopped.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        report = _bench(opts)
    except BenchError as exc:
        print(f"bench e2e: {exc}", file=sys.stderr)
        return 1
    if opts.as_json:
        print(json.dumps(report, indent=2))
    exit_code: int = report["exit_code"]
    return exit_code


def _exit_on_signal(signum: int, _frame: FrameType | None) -> NoReturn:
    raise SystemExit(128 + signum)


def _say(message: str) -> None:
    """Progress goes to stderr so that `--json` output stays one document."""
    print(message, file=sys.stderr, flush=True)


# -- the stack -------------------------------------------------------------------------


@dataclass
class Target:
    """The stack under test: its dev.env, where it lives, and its `paystream dev` process."""

    env: dict[str, str]
    home: Path
    mode: str  # "private" or "attach"
    dev: psutil.Process | None
    launch_env: dict[str, str]  # what extra gateway workers start with
    log_files: list[Path] = field(default_factory=list)


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs if not k.startswith("#")}


def _private_stack(stack: contextlib.ExitStack, opts: Options) -> Target:
    """A `paystream dev` of our own: temp home, free ports, embedded broker and database."""
    home = Path(tempfile.mkdtemp(prefix="paystream-bench-e2e-"))
    env = private_env(home, **opts.extra_env)
    log = stack.enter_context((home / "dev.log").open("wb"))
    dev = start_dev(env, log)
    stack.callback(_stop_dev, dev, home)
    _say(f"starting a private stack in {home} (logs: {home / 'logs'}, {home / 'dev.log'})")
    dev_env = _wait_dev_env(home / "dev.env", dev, home)
    return Target(dev_env, home, "private", psutil.Process(dev.pid), env, [home / "dev.log"])


def _wait_dev_env(path: Path, dev: subprocess.Popen[bytes], home: Path) -> dict[str, str]:
    deadline = time.monotonic() + STACK_START_S
    while not path.exists():
        if dev.poll() is not None:
            raise BenchError(f"paystream dev exited with {dev.returncode}; see {home}/dev.log")
        if time.monotonic() > deadline:
            raise BenchError(f"paystream dev not up after {STACK_START_S:.0f} s; see {home}")
        time.sleep(0.2)  # polling the condition above, with its deadline
    return _read_env(path)


def _stop_dev(dev: subprocess.Popen[bytes], home: Path) -> None:
    """SIGTERM the group (dev stops its children), then drop the database files."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(dev.pid, signal.SIGTERM)
    try:
        dev.wait(60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dev.pid, signal.SIGKILL)
        dev.wait(10)
    # The logs stay for inspection; PostgreSQL's data directory is tens of MB.
    shutil.rmtree(home / "pg", ignore_errors=True)


def _attached_stack(path: Path) -> Target:
    """A running stack from its dev.env; CPU from its `paystream dev` process tree if found."""
    dev_env = _read_env(path)
    home = path.resolve().parent
    dev = _find_dev(home, dev_env["PAYSTREAM_KAFKA_BOOTSTRAP"])
    if dev is None:
        _say(
            "no `paystream dev` process found for this dev.env: CPU covers only the"
            " processes recognised by command line among all processes"
        )
    else:
        _say(f"attached to paystream dev pid {dev.pid} ({home})")
    return Target(dev_env, home, "attach", dev, {**os.environ, **dev_env})


def _find_dev(home: Path, bootstrap: str) -> psutil.Process | None:
    """The `paystream dev` whose home is `home`, or whose services use `bootstrap`."""
    for proc in psutil.process_iter():
        try:
            args = _paystream_args(proc.cmdline())
            if not args or args[0] != "dev":
                continue
            if _dev_home(proc, args) == home or any(
                _uses_bootstrap(child, bootstrap) for child in proc.children()
            ):
                return proc
        except psutil.Error:  # exited or not ours to inspect
            continue
    return None


def _dev_home(proc: psutil.Process, args: list[str]) -> Path:
    """`paystream dev --home X`, else its PAYSTREAM_HOME, else `.paystream` in its cwd."""
    home = proc.environ().get("PAYSTREAM_HOME", ".paystream")
    for i, arg in enumerate(args):
        if arg == "--home" and i + 1 < len(args):
            home = args[i + 1]
        elif arg.startswith("--home="):
            home = arg.removeprefix("--home=")
    return (Path(proc.cwd()) / home).resolve()


def _uses_bootstrap(proc: psutil.Process, bootstrap: str) -> bool:
    try:
        return proc.environ().get("PAYSTREAM_KAFKA_BOOTSTRAP") == bootstrap
    except psutil.Error:
        return False


def _extra_workers(
    stack: contextlib.ExitStack, target: Target, opts: Options
) -> list[psutil.Process]:
    """Scale-out: more gateway workers in the dev worker's consumer group.

    Each gets its own health port; it is ready once the group gave it partitions, which
    also means the rebalance that moved them away from the other workers is done.
    """
    if not opts.gateway_workers:
        return []
    keyring_file = target.home / DEV_KEYRING_FILE
    if not keyring_file.exists():
        raise BenchError(f"--gateway-workers needs the stack's key ring at {keyring_file}")
    # An extra worker needs the stack's keys to open the gateway credentials.
    ring = read_keyring_file(keyring_file).environment_with_key_material()
    partitions = _command_partitions(target.env)
    if opts.gateway_workers + 1 > partitions:
        # a worker without partitions would never be ready and would only add idle CPU
        raise BenchError(f"{opts.gateway_workers + 1} gateway workers for {partitions} partitions")
    started: list[tuple[subprocess.Popen[bytes], int, Path]] = []
    for n in range(1, opts.gateway_workers + 1):
        port = free_port()
        log_path = target.home / "logs" / f"bench-gateway-worker-{n}.log"
        log = stack.enter_context(log_path.open("wb"))
        env = {
            **target.launch_env,
            **target.env,
            **ring,
            **opts.extra_env,
            "PAYSTREAM_WORKER_WEB_PORT": str(port),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "paystream_cli.main", "worker", "gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop_process, proc)
        target.log_files.append(log_path)
        started.append((proc, port, log_path))
    for proc, port, log_path in started:
        _wait_assigned(proc, port, log_path)
    _say(f"{len(started)} extra gateway worker(s) have partitions")
    return [psutil.Process(proc.pid) for proc, _, _ in started]


def _command_partitions(dev_env: dict[str, str]) -> int:
    topic = f"{dev_env['PAYSTREAM_TOPIC_PREFIX']}.commands"
    admin = AdminClient({"bootstrap.servers": dev_env["PAYSTREAM_KAFKA_BOOTSTRAP"]})
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def _wait_assigned(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + WORKER_READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"extra gateway worker exited with {proc.returncode}; see {log_path}")
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer,
        ):
            if int(json.load(answer).get("assigned_partitions", 0)) > 0:
                return
        time.sleep(0.2)  # polling the condition above, with its deadline
    raise BenchError(f"extra gateway worker got no partitions in {WORKER_READY_S:.0f} s")


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- outcome events --------------------------------------------------------------------


class OutcomeReader:
    """Reads `<prefix>.outcomes` in a thread; remembers when each terminal outcome arrived.

    It also watches `<prefix>.callbacks`: providers call back after the outcome (for most
    payments, a no-op confirmation), so "the stack is quiet" needs the callbacks too.
    """

    def __init__(self, dev_env: dict[str, str]) -> None:
        self._config = {
            "bootstrap.servers": dev_env["PAYSTREAM_KAFKA_BOOTSTRAP"],
            "group.id": f"bench-e2e-{uuid.uuid4()}",
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
            # tansu answers a fetch only when the wait expires, so this bounds how late an
            # outcome is read. Not shorter: the reader is part of the load generator, and at
            # 5 ms its fetches cost the broker 1.2 ms of CPU per payment at 50/s (25 ms: the
            # same p50/p99, broker 4.4 -> 3.2 ms/payment). Shorter than the gateway worker's
            # 100 ms: the reader's wait adds to every end-to-end latency it measures.
            "fetch.wait.max.ms": 25,
            "fetch.queue.backoff.ms": 0,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "log.connection.close": False,
        }
        self._topic = f"{dev_env['PAYSTREAM_TOPIC_PREFIX']}.outcomes"
        self._callbacks = f"{dev_env['PAYSTREAM_TOPIC_PREFIX']}.callbacks"
        self.last_callback = 0.0  # monotonic time the latest callback record arrived
        self.arrived: dict[str, tuple[float, str]] = {}  # transaction -> (monotonic, status)
        self._changed = threading.Condition()
        self._waiting: set[str] = set()
        self._ready = threading.Event()
        self._stop = threading.Event()
        # While set, the reader fetches nothing: the idle measurement is of the stack alone,
        # not of the reader's fetch loop (a fetch every 25 ms keeps the broker busy).
        self.paused = threading.Event()
        self._resumed = threading.Event()  # the consumer is fetching (not paused)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-outcomes", daemon=True)

    def __enter__(self) -> OutcomeReader:
        self._thread.start()
        deadline = time.monotonic() + READER_READY_S
        while not self._ready.wait(0.1):
            if self._failure is not None or time.monotonic() > deadline:
                self.__exit__()
                raise BenchError(f"outcome consumer not assigned: {self._failure or 'timeout'}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        try:
            consumer = Consumer(self._config)
            consumer.subscribe([self._topic, self._callbacks], on_assign=self._on_assign)
        except Exception as exc:
            self._failure = exc
            return
        try:
            paused = False
            while not self._stop.is_set():
                if self.paused.is_set() != paused:
                    paused = self.paused.is_set()
                    (consumer.pause if paused else consumer.resume)(consumer.assignment())
                if not paused:
                    self._resumed.set()
                # poll() returns as soon as one record is there; consume(n, timeout) would
                # wait for n records or the whole timeout and blur the arrival time.
                msg = consumer.poll(0.05)
                now = time.monotonic()
                if msg is not None:
                    self._record(msg, now)
                    for more in consumer.consume(500, 0):
                        self._record(more, now)
        except Exception as exc:
            self._failure = exc
            raise
        finally:
            consumer.close()

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """Start each partition at its current end, explicitly.

        "latest" alone is resolved lazily, after the assignment: an outcome published in
        between would be skipped. With explicit offsets, everything published after this
        callback is read, so the bench may start as soon as it has run.
        """
        for tp in partitions:
            _low, tp.offset = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
        consumer.assign(partitions)
        self._ready.set()

    def _record(self, msg: Any, now: float) -> None:
        if msg.error() or not msg.value():
            return
        if msg.topic() == self._callbacks:
            self.last_callback = now
            return
        data = json.loads(msg.value())
        status, txn = data.get("status"), data.get("transaction_id")
        if status not in TERMINAL or not txn:
            return
        with self._changed:
            if txn not in self.arrived:
                self.arrived[txn] = (now, status)
            self._waiting.discard(txn)
            if not self._waiting:
                self._changed.notify_all()

    def pause(self) -> None:
        self._resumed.clear()
        self.paused.set()

    def resume(self) -> None:
        """Fetch again, and return once the reader reads outcomes as soon as they come."""
        self.paused.clear()
        if not self._resumed.wait(READER_READY_S):
            raise BenchError(f"outcome consumer not resumed: {self._failure or 'timeout'}")
        time.sleep(RESUME_SETTLE_S)  # see RESUME_SETTLE_S: nothing observable to wait for

    def wait_terminal(self, txns: Iterable[str], timeout: float) -> bool:
        """Until every one of `txns` has a terminal outcome, or `timeout`; True if all did."""
        with self._changed:
            self._waiting = {t for t in txns if t not in self.arrived}
            return self._changed.wait_for(lambda: not self._waiting, timeout)

    def wait_callbacks_quiet(self, quiet_s: float, timeout: float) -> bool:
        """Until no provider callback arrived for `quiet_s`, or `timeout`; True if quiet."""
        deadline = time.monotonic() + timeout
        while (since := time.monotonic() - self.last_callback) < quiet_s:
            if time.monotonic() + quiet_s - since > deadline:
                return False
            time.sleep(quiet_s - since)  # the earliest the condition can hold; then re-check
        return True

    def status(self, txn: str | None) -> str | None:
        with self._changed:
            found = self.arrived.get(txn) if txn else None
        return found[1] if found else None


# -- CPU accounting --------------------------------------------------------------------

Key = tuple[int, float]  # (pid, create time): a reused pid is another process
Discovery = Callable[[], Iterator[tuple[psutil.Process, str]]]
# (pid, create time) of a PostgreSQL process -> the service it serves (bench_pg_clients)
ClientOf = Callable[[int, float], str]


@dataclass(frozen=True)
class _Seen:
    label: str
    cpu_s: float
    at: float  # when this sample was taken (monotonic)
    client: str = ""  # a PostgreSQL process: the service it serves


@dataclass(frozen=True)
class Mark:
    """Every process's latest sample at a moment, plus the machine's CPU time."""

    at: float
    machine: tuple[float, float]  # all cores since boot: (busy, irq + softirq) seconds
    procs: dict[Key, _Seen]


@dataclass
class Use:
    processes: int = 0
    new_processes: int = 0
    cpu_s: float = 0.0
    by_client: dict[str, float] = field(default_factory=dict)  # PostgreSQL: per service


class CpuSampler:
    """Samples the CPU time of the discovered processes every SAMPLE_INTERVAL_S.

    Frequent samples keep what is missed small for a process that exits between two (a
    PostgreSQL backend, a restarted service): it keeps its last sample.
    """

    def __init__(self, discover: Discovery, client_of: ClientOf | None = None) -> None:
        self._discover = discover
        self._client_of = client_of
        self._seen: dict[Key, _Seen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-cpu", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            for proc, label in self._discover():
                try:
                    times = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
                except psutil.Error:  # gone: its last sample stands
                    continue
                client = ""
                if label == "postgresql" and self._client_of is not None:
                    client = self._client_of(*key)
                self._seen[key] = _Seen(label, times.user + times.system, time.monotonic(), client)

    def mark(self) -> Mark:
        at = time.monotonic()
        self._sample()
        with self._lock:
            return Mark(at, _machine_s(), dict(self._seen))


def _machine_s() -> tuple[float, float]:
    """All cores' busy time, and the part spent in interrupts, which no process is charged
    with (with IRQ time accounting): mostly the loopback traffic between the processes."""
    times = psutil.cpu_times()
    # steal: the hypervisor ran someone else; nothing on this machine used that time
    idle = times.idle + getattr(times, "iowait", 0.0) + getattr(times, "steal", 0.0)
    # guest time is already counted in user on Linux
    guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    interrupts = getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    return sum(times) - idle - guest, interrupts


@dataclass
class MachineCpu:
    """Whole-machine CPU in % of one core: what the process groups do not show."""

    busy_percent_core: float  # every process and the kernel
    interrupts_percent_core: float  # irq + softirq
    other_percent_core: float  # busy - interrupts - every group: other processes (tests...)


def _machine(begin: Mark, end: Mark, everything_s: float) -> MachineCpu:
    window = end.at - begin.at
    busy = end.machine[0] - begin.machine[0]
    interrupts = end.machine[1] - begin.machine[1]
    return MachineCpu(
        busy_percent_core=_percent(busy, window),
        interrupts_percent_core=_percent(interrupts, window),
        other_percent_core=_percent(busy - interrupts - everything_s, window),
    )


def usage(begin: Mark, end: Mark) -> dict[str, Use]:
    """CPU seconds per group between two marks (new processes from zero)."""
    out = {group: Use() for group in GROUPS}
    for key, seen in end.procs.items():
        if seen.at < begin.at:  # gone before the window started
            continue
        start = begin.procs.get(key)
        use = out[seen.label]
        use.processes += 1
        use.new_processes += start is None
        cpu_s = seen.cpu_s - (start.cpu_s if start else 0.0)
        use.cpu_s += cpu_s
        if seen.client:
            use.by_client[seen.client] = use.by_client.get(seen.client, 0.0) + cpu_s
    return out


def classify(cmdline: list[str], name: str) -> str | None:
    """The group of a process from its name and command line; None: its parent's group."""
    first = Path(cmdline[0]).name if cmdline else ""
    if "tansu" in name or "tansu" in first:
        return "broker"
    if name in ("postgres", "postmaster") or first == "postgres" or first.startswith("postgres:"):
        return "postgresql"
    args = _paystream_args(cmdline)
    if args is None:
        return None
    for prefix, group in PAYSTREAM_COMMANDS:
        if tuple(args[: len(prefix)]) == prefix:
            return group
    return None


def _paystream_args(cmdline: list[str]) -> list[str] | None:
    """The arguments after `python -m paystream_cli.main` or the `paystream` script."""
    for i, arg in enumerate(cmdline[:4]):
        if arg == "paystream_cli.main" or Path(arg).name == "paystream":
            return cmdline[i + 1 :]
    return None


def _classify(proc: psutil.Process) -> str | None:
    try:
        return classify(proc.cmdline(), proc.name())
    except psutil.Error:
        return None


def tree_discovery(roots: list[psutil.Process], extra: list[psutil.Process]) -> Discovery:
    """This process, the trees under `roots` (children inherit an unclassified label), and
    the extra gateway workers."""

    def discover() -> Iterator[tuple[psutil.Process, str]]:
        yield psutil.Process(), "load_generator"
        # One pass over /proc per sample: Process.children() scans every process each call.
        children: dict[int, list[psutil.Process]] = {}
        for proc in psutil.process_iter(["ppid"]):
            children.setdefault(proc.info["ppid"], []).append(proc)
        pending = [(proc, "dev_supervisor") for proc in roots]
        pending += [(proc, "gateway_worker") for proc in extra]
        while pending:
            proc, inherited = pending.pop()
            label = _classify(proc) or inherited
            yield proc, label
            pending.extend((child, label) for child in children.get(proc.pid, []))

    return discover


def scan_discovery(dev_env: dict[str, str], extra: list[psutil.Process]) -> Discovery:
    """No dev process to start from: every process whose command line matches this stack.

    Paystream services whose environment names another broker are left out (when the
    environment is readable), the broker by its listener port, PostgreSQL by the server
    port and that postmaster's children.
    """
    bootstrap = dev_env["PAYSTREAM_KAFKA_BOOTSTRAP"]
    broker_port = bootstrap.split(",")[0].rsplit(":", 1)[-1]
    db_port = _url_port(dev_env["PAYSTREAM_DATABASE_URL"])

    def belongs(proc: psutil.Process, label: str) -> bool:
        cmdline = proc.cmdline()
        if label == "broker":
            return any(broker_port in arg for arg in cmdline)
        if label == "postgresql":
            return _postmaster_port(proc) == db_port
        try:
            return proc.environ().get("PAYSTREAM_KAFKA_BOOTSTRAP", bootstrap) == bootstrap
        except psutil.AccessDenied:
            return True

    def discover() -> Iterator[tuple[psutil.Process, str]]:
        yield psutil.Process(), "load_generator"
        yield from ((proc, "gateway_worker") for proc in extra)
        extra_pids = {proc.pid for proc in extra}
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                label = _classify(proc)
                if label is None or label == "dev_supervisor" or proc.pid in extra_pids:
                    continue
                if belongs(proc, label):
                    yield proc, label

    return discover


def _url_port(url: str) -> str | None:
    netloc = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return netloc.rsplit(":", 1)[1] if ":" in netloc else None


def _postmaster_port(proc: psutil.Process) -> str | None:
    """`-p PORT` of the postmaster (a backend: of its parent)."""
    for candidate in (proc, proc.parent()):
        if candidate is None:
            continue
        cmdline = candidate.cmdline()
        if "-p" in cmdline[:-1]:
            return cmdline[cmdline.index("-p") + 1]
    return None


# -- load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    kind: str  # "deposit" or "withdrawal"
    raw: bytes  # the whole HTTP request, built before the clock starts


@dataclass
class Sent:
    kind: str
    scheduled: float
    written: float | None = None
    answered: float | None = None
    status: str = "unanswered"  # the HTTP status code, "timeout" or "error"
    txn: str | None = None


@dataclass
class LoadResult:
    sent: list[Sent]
    connections_opened: int


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float = 0.0


class _Pool:
    """Idle keep-alive connections; a new one whenever none is free, so that a slow
    answer never holds back the schedule."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[_Conn] = []
        self.opened = 0

    async def take(self) -> tuple[_Conn, bool]:
        """A connection and whether it was reused."""
        while self.idle:
            conn = self.idle.pop()  # the most recently used: least likely to be closed
            fresh = time.monotonic() - conn.last_used < KEEPALIVE_IDLE_S
            if fresh and not conn.reader.at_eof():
                return conn, True
            conn.writer.close()
        self.opened += 1
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Conn(reader, writer), False

    def give(self, conn: _Conn) -> None:
        conn.last_used = time.monotonic()
        self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.writer.close()
        self.idle.clear()


def http_post(host: str, path: str, api_key: str, key: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_key}\r\n"
        f"Idempotency-Key: {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def open_loop(url: str, plan: list[Planned], rate: float) -> LoadResult:
    """Send `plan` at `rate` per second on schedule, each request in its own task."""
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    pool = _Pool(host, int(port))
    sent = [Sent(item.kind, 0.0) for item in plan]
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    for i, (item, record) in enumerate(zip(plan, sent, strict=True)):
        record.scheduled = start + i / rate
        delay = record.scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the schedule
        tasks.append(asyncio.create_task(_exchange(pool, item.raw, record)))
    await asyncio.gather(*tasks)
    pool.close()
    return LoadResult(sent, pool.opened)


async def _exchange(pool: _Pool, raw: bytes, record: Sent) -> None:
    try:
        await asyncio.wait_for(_post(pool, raw, record), REQUEST_TIMEOUT_S)
    except TimeoutError:
        record.status = "timeout"
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        record.status = "error"


async def _post(pool: _Pool, raw: bytes, record: Sent) -> None:
    for attempt in (1, 2):
        conn, reused = await pool.take()
        if record.written is None:
            record.written = time.monotonic()
        try:
            conn.writer.write(raw)
            status, body, keep_alive = await _read_response(conn.reader)
        except (OSError, asyncio.IncompleteReadError):
            conn.writer.close()
            if reused and attempt == 1:
                # The server closed this idle connection as we reused it. The same
                # Idempotency-Key makes the resend safe; latency still counts from the first.
                continue
            raise
        except BaseException:  # cancelled by the timeout: the connection is unusable
            conn.writer.close()
            raise
        record.answered = time.monotonic()
        record.status = status
        if status == "202":
            record.txn = str(json.loads(body)["transaction_id"])
        if keep_alive:
            pool.give(conn)
        else:
            conn.writer.close()
        return


async def _read_response(reader: asyncio.StreamReader) -> tuple[str, bytes, bool]:
    """(status code, body, keep-alive) of one HTTP/1.1 response with a Content-Length."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = head[0].split(" ", 2)[1]
    length, keep_alive = 0, True
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "connection" and value.strip().lower() == "close":
            keep_alive = False
    return status, await reader.readexactly(length), keep_alive


# -- a session: warm-up, idle, runs ----------------------------------------------------


@dataclass
class Session:
    opts: Options
    target: Target
    outcomes: OutcomeReader
    sampler: CpuSampler
    funded: list[tuple[str, str]] = field(default_factory=list)  # (account, country)
    idle: dict[str, Use] = field(default_factory=dict)
    idle_window_s: float = 0.0
    idle_machine: MachineCpu | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    issued: int = 0  # requests built, for unique Idempotency-Keys
    deposits: int = 0  # load deposits built, to spread them over the accounts

    @property
    def url(self) -> str:
        return self.target.env["PAYSTREAM_API_URL"]

    def request(self, kind: str, body: dict[str, Any]) -> Planned:
        self.issued += 1
        host = self.url.removeprefix("http://").rstrip("/")
        key = f"bench-e2e-{self.run_id}-{self.issued}-{uuid.uuid4().hex[:8]}"
        api_key = self.target.env["PAYSTREAM_DEMO_API_KEY"]
        return Planned(kind, http_post(host, f"/v1/{kind}s", api_key, key, body))


def _deposit_body(account: str, country: str, amount: str) -> dict[str, Any]:
    return {
        "account_id": account,
        "country": country,
        "amount": amount,
        "currency": CURRENCY[country],
        "payment_method": "pm_card_visa",
    }


def _withdrawal_body(account: str, country: str) -> dict[str, Any]:
    return {
        "account_id": account,
        "country": country,
        "amount": WITHDRAWAL_AMOUNT,
        "currency": CURRENCY[country],
        "destination": STRIPE_DESTINATION if country in STRIPE_COUNTRIES else DESTINATION,
    }


def _plan(session: Session, count: int) -> list[Planned]:
    """Deposits round-robin over countries and accounts; every k-th a withdrawal."""
    share = session.opts.withdrawals if session.funded else 0.0
    plan: list[Planned] = []
    withdrawals = 0
    for i in range(count):
        # spread evenly: request i is a withdrawal when the running share crosses an integer
        if math.floor((i + 1) * share) > math.floor(i * share):
            account, country = session.funded[withdrawals % len(session.funded)]
            plan.append(session.request("withdrawal", _withdrawal_body(account, country)))
            withdrawals += 1
        else:
            country = COUNTRIES[session.deposits % len(COUNTRIES)]
            account = f"bench-{session.deposits % ACCOUNTS}"
            plan.append(session.request("deposit", _deposit_body(account, country, DEPOSIT_AMOUNT)))
            session.deposits += 1
    return plan


def _funding_amount(opts: Options) -> str:
    """Enough on each warm-up account for every withdrawal `--max-requests` allows."""
    if not opts.withdrawals:
        return DEPOSIT_AMOUNT
    withdrawals = math.ceil(opts.max_requests * opts.withdrawals / WARMUP_DEPOSITS) + 1
    return f"{withdrawals * WITHDRAWAL_UNITS}.00"


def _warm_up(session: Session) -> None:
    """Deposits that must reach a terminal outcome: groups joined, lazy clients built,
    accounts funded for withdrawals. A non-202 (a client still connecting) is resent
    with the same Idempotency-Key until the deadline."""
    amount = _funding_amount(session.opts)
    accounts = [
        (f"bench-fund-{session.run_id}-{i}", COUNTRIES[i % len(COUNTRIES)])
        for i in range(WARMUP_DEPOSITS)
    ]
    pending = {
        i: session.request("deposit", _deposit_body(a, c, amount))
        for i, (a, c) in enumerate(accounts)
    }
    txns: dict[int, str] = {}
    deadline = time.monotonic() + WARMUP_DEADLINE_S
    _say(f"warm-up: {WARMUP_DEPOSITS} deposits at {WARMUP_RATE:g}/s")
    while pending:
        if time.monotonic() > deadline:
            raise BenchError(f"warm-up: {len(pending)} deposits not accepted in time")
        order = list(pending)
        result = asyncio.run(open_loop(session.url, [pending[i] for i in order], WARMUP_RATE))
        for i, sent in zip(order, result.sent, strict=True):
            if sent.txn:
                txns[i] = sent.txn
                del pending[i]
            elif sent.status.startswith("4") and sent.status not in ("408", "429"):
                raise BenchError(f"warm-up: POST /v1/deposits answered {sent.status}")
    if not session.outcomes.wait_terminal(txns.values(), deadline - time.monotonic()):
        raise BenchError(
            f"warm-up: deposits not terminal after {WARMUP_DEADLINE_S:.0f} s;"
            f" see the logs in {session.target.home / 'logs'}"
        )
    # The last deposits' provider callbacks (and lazy set-up on that path) would otherwise
    # land in the idle window.
    if not session.outcomes.wait_callbacks_quiet(CALLBACKS_QUIET_S, WARMUP_DEADLINE_S):
        _say(f"warm-up: provider callbacks still arriving after {WARMUP_DEADLINE_S:.0f} s")
    session.funded = [
        accounts[i] for i, txn in txns.items() if session.outcomes.status(txn) == "succeeded"
    ]
    if session.opts.withdrawals and not session.funded:
        raise BenchError("warm-up: no funding deposit succeeded; withdrawals would fail")


def _measure_idle(session: Session) -> None:
    _say(f"idle CPU over {session.opts.idle_s:g} s")
    session.outcomes.pause()
    try:
        begin = session.sampler.mark()
        time.sleep(session.opts.idle_s)  # the measuring interval itself, not a wait for anything
        end = session.sampler.mark()
    finally:
        session.outcomes.resume()
    session.idle = usage(begin, end)
    session.idle_window_s = end.at - begin.at
    session.idle_machine = _machine(begin, end, sum(use.cpu_s for use in session.idle.values()))


@dataclass
class Latency:
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None


@dataclass
class GroupCpu:
    processes: int
    new_processes: int
    idle_processes: int
    idle_percent_core: float
    percent_core: float
    cpu_ms: float
    ms_per_payment: float | None


@dataclass
class RunFigures:
    step: int
    offered_rate: float
    seconds: float
    requests: int
    deposits: int
    withdrawals: int
    accepted: int
    accepted_per_s: float
    non_202: dict[str, int]
    terminal: dict[str, int]
    terminal_total: int
    terminal_per_s: float
    lost: int
    post_latency_ms: Latency
    e2e_latency_ms: Latency
    max_schedule_lag_ms: float
    connections_opened: int
    window_s: float
    machine: MachineCpu
    cpu: dict[str, GroupCpu]
    # PostgreSQL's line split by the service each backend serves (application_name)
    postgresql_by_client: dict[str, GroupCpu] = field(default_factory=dict)
    passed: bool | None = None
    failed_because: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    """One run: `rate` requests/s for `seconds`."""

    number: int
    rate: float
    seconds: float

    @property
    def count(self) -> int:
        return max(1, round(self.rate * self.seconds))


def _one_run(session: Session, step: Step) -> RunFigures:
    plan = _plan(session, step.count)
    _say(f"run {step.number}: {step.count} requests at {step.rate:g}/s")
    begin = session.sampler.mark()
    result = asyncio.run(open_loop(session.url, plan, step.rate))
    accepted = [sent.txn for sent in result.sent if sent.txn]
    session.outcomes.wait_terminal(accepted, session.opts.drain_s)
    end = session.sampler.mark()
    return _figures(session, step, result, begin, end)


def _figures(
    session: Session, step: Step, result: LoadResult, begin: Mark, end: Mark
) -> RunFigures:
    sent = result.sent
    accepted = {s.txn: session.outcomes.arrived.get(s.txn) for s in sent if s.txn}
    done = {txn: found for txn, found in accepted.items() if found is not None}
    first = min((s.written for s in sent if s.written is not None), default=begin.at)
    answered = [s.answered for s in sent if s.txn and s.answered is not None]
    last_done = max((at for at, _ in done.values()), default=first)
    terminal = len(done)
    load = usage(begin, end)
    return RunFigures(
        step=step.number,
        offered_rate=step.rate,
        seconds=step.seconds,
        requests=len(sent),
        deposits=sum(s.kind == "deposit" for s in sent),
        withdrawals=sum(s.kind == "withdrawal" for s in sent),
        accepted=len(accepted),
        accepted_per_s=_per_s(len(accepted), max(answered, default=first) - first),
        non_202=dict(Counter(s.status for s in sent if s.status != "202")),
        terminal=dict(Counter(status for _, status in done.values())),
        terminal_total=terminal,
        terminal_per_s=_per_s(terminal, last_done - first),
        lost=len(accepted) - terminal,
        post_latency_ms=_latency(
            [
                (s.answered - s.written) * 1000
                for s in sent
                if s.answered is not None and s.written is not None
            ]
        ),
        e2e_latency_ms=_latency(
            [
                (done[s.txn][0] - s.written) * 1000
                for s in sent
                if s.txn in done and s.written is not None
            ]
        ),
        max_schedule_lag_ms=max(
            ((s.written - s.scheduled) * 1000 for s in sent if s.written is not None), default=0.0
        ),
        connections_opened=result.connections_opened,
        window_s=end.at - begin.at,
        machine=_machine(begin, end, sum(use.cpu_s for use in load.values())),
        cpu=_cpu(session, load, end.at - begin.at, terminal),
        postgresql_by_client=_pg_clients_cpu(session, load, end.at - begin.at, terminal),
    )


def _per_s(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float(count)


def _percent(cpu_s: float, window_s: float) -> float:
    return cpu_s / window_s * 100 if window_s > 0 else 0.0


def _latency(values: list[float]) -> Latency:
    ordered = sorted(values)

    def rank(p: float) -> float | None:  # nearest rank: an observed value, monotonic in p
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else None

    return Latency(rank(50), rank(90), rank(99), ordered[-1] if ordered else None)


def _cpu(
    session: Session, load: dict[str, Use], window_s: float, payments: int
) -> dict[str, GroupCpu]:
    def row(groups: Iterable[str]) -> GroupCpu:
        groups = list(groups)
        cpu_s = sum(load[g].cpu_s for g in groups)
        idle_s = sum(session.idle[g].cpu_s for g in groups if g in session.idle)
        return GroupCpu(
            processes=sum(load[g].processes for g in groups),
            new_processes=sum(load[g].new_processes for g in groups),
            idle_processes=sum(session.idle[g].processes for g in groups if g in session.idle),
            idle_percent_core=_percent(idle_s, session.idle_window_s),
            percent_core=_percent(cpu_s, window_s),
            cpu_ms=cpu_s * 1000,
            ms_per_payment=cpu_s * 1000 / payments if payments else None,
        )

    rows = {group: row([group]) for group in GROUPS}
    rows[SERVICES_TOTAL] = row(key for key, _ in SERVICE_GROUPS)
    rows[EVERYTHING] = row(GROUPS)
    return rows


def _pg_clients_cpu(
    session: Session, load: dict[str, Use], window_s: float, payments: int
) -> dict[str, GroupCpu]:
    """PostgreSQL's CPU per service its backends serve, busiest first."""
    busy, idle = load["postgresql"].by_client, session.idle.get("postgresql", Use()).by_client
    rows = {}
    for client in sorted(busy, key=lambda c: -busy[c]):
        cpu_s = busy[client]
        rows[client] = GroupCpu(
            processes=0,
            new_processes=0,
            idle_processes=0,
            idle_percent_core=_percent(idle.get(client, 0.0), session.idle_window_s),
            percent_core=_percent(cpu_s, window_s),
            cpu_ms=cpu_s * 1000,
            ms_per_payment=cpu_s * 1000 / payments if payments else None,
        )
    return rows


def _judge(figures: RunFigures, opts: Options) -> None:
    """find-max: a step passes when the stack kept up with what was offered."""
    reasons = []
    if not figures.accepted:
        reasons.append("nothing accepted")
    if figures.lost:
        reasons.append(f"{figures.lost} lost")
    if figures.non_202:
        reasons.append(f"{sum(figures.non_202.values())} non-202")
    p99 = figures.e2e_latency_ms.p99
    if p99 is not None and p99 > opts.max_p99_ms:
        reasons.append(f"e2e p99 {p99:.0f} ms > {opts.max_p99_ms:g} ms")
    if figures.terminal_per_s < 0.95 * figures.offered_rate:
        reasons.append(f"terminal {figures.terminal_per_s:.1f}/s < 95% of offered")
    figures.passed = not reasons
    figures.failed_because = reasons


def _single_run(session: Session) -> tuple[list[RunFigures], None]:
    opts = session.opts
    figures = _one_run(session, Step(1, opts.rate, opts.seconds))
    if not opts.as_json:
        _print_run(figures, session)
    return [figures], None


def _find_max(session: Session) -> tuple[list[RunFigures], str | None]:
    opts = session.opts
    runs: list[RunFigures] = []
    rate, used = opts.rate, 0
    while True:
        step = Step(len(runs) + 1, rate, opts.seconds)
        if used + step.count > opts.max_requests:
            return runs, f"the next step ({step.count} requests) would pass --max-requests"
        figures = _one_run(session, step)
        _judge(figures, opts)
        runs.append(figures)
        used += step.count
        if not opts.as_json:
            _print_run(figures, session)
        if not figures.passed:
            return runs, f"step {figures.step} failed: {'; '.join(figures.failed_because)}"
        rate *= opts.step_factor


# -- logs ------------------------------------------------------------------------------


def _log_sizes(target: Target) -> dict[Path, int]:
    """Where each log ends now: only what this run appends is scanned afterwards."""
    files = [*sorted((target.home / "logs").glob("*.log")), *target.log_files]
    return {path: path.stat().st_size if path.exists() else 0 for path in files}


def _log_problems(target: Target, sizes: dict[Path, int]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in {*sizes, *(target.home / "logs").glob("*.log"), *target.log_files}:
        try:
            with path.open("rb") as log:
                log.seek(sizes.get(path, 0))
                counts = _count_problems(log)
        except OSError:
            continue
        if counts["errors"] or counts["warnings"]:
            found[path.name] = counts
    return found


# Our format is "... ERROR process logger: ...", faust's "[...] [pid] [ERROR] ...".
_ERROR_LINE = re.compile(r"(^Traceback|[\s\[](ERROR|CRITICAL)[\s\]])")
_WARNING_LINE = re.compile(r"[\s\[]WARNING[\s\]]")


def _count_problems(log: IO[bytes]) -> dict[str, Any]:
    errors = warnings = 0
    first: str | None = None
    for raw in log:
        line = raw.decode(errors="replace").rstrip()
        if _ERROR_LINE.search(line):
            errors += 1
            first = first or line[:300]
        elif _WARNING_LINE.search(line):
            warnings += 1
            first = first or line[:300]
    return {"errors": errors, "warnings": warnings, "first": first}


# -- the whole benchmark ---------------------------------------------------------------


def _bench(opts: Options) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        target = _attached_stack(opts.attach) if opts.attach else _private_stack(stack, opts)
        sizes = _log_sizes(target)
        extra = _extra_workers(stack, target, opts)
        discover = (
            tree_discovery([target.dev], extra) if target.dev else scan_discovery(target.env, extra)
        )
        outcomes = stack.enter_context(OutcomeReader(target.env))
        clients = PgClients(target.env["PAYSTREAM_DATABASE_URL"])
        stack.callback(clients.close)
        sampler = stack.enter_context(CpuSampler(discover, clients.name))
        session = Session(opts, target, outcomes, sampler)
        _warm_up(session)
        _measure_idle(session)
        runs, stop_reason = _find_max(session) if opts.find_max else _single_run(session)
        problems = _log_problems(target, sizes)
        report = _report(session, runs, stop_reason, problems)
        if not opts.as_json:
            _print_summary(report, runs)
        _say("stopping the stack" if target.mode == "private" else "done")
    return report


def _report(
    session: Session,
    runs: list[RunFigures],
    stop_reason: str | None,
    problems: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    opts, target = session.opts, session.target
    failed = not runs or not any(r.accepted for r in runs) or any(r.lost for r in runs)
    passing = [r.offered_rate for r in runs if r.passed]
    return {
        "stack": {
            "mode": target.mode,
            "home": str(target.home),
            "dev_pid": target.dev.pid if target.dev else None,
            "cpu_scope": "process tree" if target.dev else "command-line match",
            "extra_gateway_workers": opts.gateway_workers,
            "env": opts.extra_env,
            "cores": psutil.cpu_count() or 0,
        },
        "options": {
            "withdrawals": opts.withdrawals,
            "drain_s": opts.drain_s,
            "idle_s": opts.idle_s,
            "find_max": opts.find_max,
        },
        "idle": {
            "window_s": session.idle_window_s,
            "machine": dataclasses.asdict(session.idle_machine) if session.idle_machine else None,
        },
        "runs": [dataclasses.asdict(r) for r in runs],
        "find_max": {
            "max_passing_rate": max(passing) if passing else None,
            "stopped_because": stop_reason,
            "criteria": {"max_p99_ms": opts.max_p99_ms, "min_terminal_share": 0.95},
        }
        if opts.find_max
        else None,
        "log_problems": problems,
        "exit_code": 1 if failed else 0,
    }


# -- printing --------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def _table(header: list[str], rows: list[list[str]], *, text_last: bool = False) -> None:
    """Numbers right-aligned; the first column (and the last if `text_last`) are text."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [cell.rjust(width) for cell, width in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        if text_last:
            cells[-1] = row[-1]
        print("  " + "  ".join(cells).rstrip())


def _print_run(r: RunFigures, session: Session) -> None:
    print(
        f"\nrun {r.step}: {r.offered_rate:g} requests/s offered for {r.seconds:g} s,"
        f" {r.requests} requests ({r.deposits} deposits, {r.withdrawals} withdrawals)"
    )
    header = ["", "offered/s", "accepted/s", "non-202", "terminal/s", "lost", "POST p50"]
    header += ["POST p99", "e2e p50", "e2e p90", "e2e p99", "max lag"]
    post, e2e = r.post_latency_ms, r.e2e_latency_ms
    row = ["", f"{r.offered_rate:.1f}", f"{r.accepted_per_s:.1f}", str(sum(r.non_202.values()))]
    row += [f"{r.terminal_per_s:.1f}", str(r.lost), _ms(post.p50), _ms(post.p99)]
    row += [_ms(e2e.p50), _ms(e2e.p90), _ms(e2e.p99), _ms(r.max_schedule_lag_ms)]
    _table(header, [row])
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(r.terminal.items())) or "none"
    non_202 = ", ".join(f"{k} {v}" for k, v in sorted(r.non_202.items())) or "none"
    print(
        f"  accepted {r.accepted}; terminal: {statuses}; non-202: {non_202};"
        f" connections opened {r.connections_opened}"
    )
    _print_cpu(r, session)


MACHINE_ROWS = (
    ("kernel interrupts (irq+softirq)", "interrupts_percent_core"),
    ("other processes on the machine", "other_percent_core"),
    ("= machine (all cores)", "busy_percent_core"),
)


def _print_cpu(r: RunFigures, session: Session) -> None:
    print(
        f"  CPU over the {r.window_s:.1f} s load window ({r.terminal_total} payments);"
        f" idle over {session.idle_window_s:.1f} s before it"
    )
    titles = dict(SERVICE_GROUPS + OTHER_GROUPS)
    titles |= {SERVICES_TOTAL: "= paystream services total", EVERYTHING: "= everything"}
    order = [key for key, _ in SERVICE_GROUPS] + [SERVICES_TOTAL]
    order += [key for key, _ in OTHER_GROUPS] + [EVERYTHING]
    rows = []
    for key in order:
        g = r.cpu[key]
        procs = str(g.processes) + (f" (+{g.new_processes} new)" if g.new_processes else "")
        per = "-" if g.ms_per_payment is None else f"{g.ms_per_payment:.1f}"
        rows.append(
            [titles[key], procs, f"{g.idle_percent_core:.1f}", f"{g.percent_core:.1f}", per]
        )
        if key == "postgresql":
            for client, c in r.postgresql_by_client.items():
                per = "-" if c.ms_per_payment is None else f"{c.ms_per_payment:.1f}"
                idle_core, load_core = f"{c.idle_percent_core:.1f}", f"{c.percent_core:.1f}"
                rows.append([f"  for {client}", "", idle_core, load_core, per])
    idle, load = session.idle_machine, r.machine
    assert idle is not None  # measured before any run
    for title, name in MACHINE_ROWS:
        idle_value, load_value = getattr(idle, name), getattr(load, name)
        rows.append([title, "", f"{idle_value:.1f}", f"{load_value:.1f}", ""])
    _table(["CPU", "processes", "idle %core", "load %core", "ms/payment"], rows)


def _print_summary(report: dict[str, Any], runs: list[RunFigures]) -> None:
    find_max = report["find_max"]
    if find_max:
        best = find_max["max_passing_rate"]
        print(
            f"\nfind-max: highest passing rate {'none' if best is None else f'{best:g}/s'};"
            f" stopped: {find_max['stopped_because']}"
        )
        header = ["step", "offered/s", "accepted/s", "terminal/s", "lost", "non-202"]
        header += ["e2e p50", "e2e p99", "everything ms/payment", "result"]
        rows = []
        for r in runs:
            per = r.cpu[EVERYTHING].ms_per_payment
            row = [str(r.step), f"{r.offered_rate:.1f}", f"{r.accepted_per_s:.1f}"]
            row += [f"{r.terminal_per_s:.1f}", str(r.lost), str(sum(r.non_202.values()))]
            row += [_ms(r.e2e_latency_ms.p50), _ms(r.e2e_latency_ms.p99)]
            row += ["-" if per is None else f"{per:.1f}"]
            row += ["pass" if r.passed else "fail: " + "; ".join(r.failed_because)]
            rows.append(row)
        _table(header, rows, text_last=True)
    for name, counts in sorted(report["log_problems"].items()):
        print(
            f"log {name}: {counts['errors']} error(s), {counts['warnings']} warning(s);"
            f" first: {counts['first']}"
        )
    print(f"exit code {report['exit_code']}")
