#!/usr/bin/env python3
"""Benchmark suite of the Gleepost realtime gateway (issue 6); `make bench` runs it.

Builds the release binaries, starts its own redis-server and two gateway nodes on free loopback
ports, runs every scenario several times with `gleepost-loadgen` and writes the medians to
docs/benchmarks.md (raw JSON reports and logs go to .bench/). Scenario g (issue 10) starts its own
Redis Cluster of 3 primaries instead (`redis-server --cluster-enabled yes`, formed with
`CLUSTER ADDSLOTSRANGE` / `CLUSTER MEET`) and the gateways with `REDIS_CLUSTER_URLS`. Issue 14's
scenarios: h (publish API, history on), h0 (history off), hb (batch API), h2 (h over HTTP/2) and lf
(two lean forwarder processes, crates/lean-forwarder, the baseline) run interleaved with b and b2;
c2 (publish API at 5,000 events/s) and c3 (the same over HTTP/2) alternate with c.

Pinning (2-core machine): the gateways run on core 0 (`taskset -c 0`), the load generator and
Redis (every cluster node too) on core 1 (`taskset -c 1`). Every scenario run gets a fresh Redis
(or cluster) and fresh gateways.

Python 3 standard library only. Everything is bounded in time; every process started here is
stopped on exit, on Ctrl-C and on errors (and gets SIGKILL if this script dies: PDEATHSIG).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import re
import resource
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
GATEWAY_BIN = RELEASE / "gleepost-gateway"
LOADGEN_BIN = RELEASE / "gleepost-loadgen"
LEAN_BIN = RELEASE / "lean-forwarder"
GATEWAY_CORE = "0"
CLIENT_CORE = "1"

JWT_SECRET = "bench-" + secrets.token_hex(16)
API_KEY = "bench-" + secrets.token_hex(12)

# Issue 6 targets.
TARGET_RSS_KIB = 4.0
TARGET_DELIVERIES = 130_000.0
TARGET_MAXRATE_P99_MS = 50.0
TARGET_FANOUT_P99_MS = 1.0
TARGET_ACCEPTS = 10_000.0

# Issue 14 targets.
TARGET_API_VS_LEAN = 0.6
TARGET_API_VS_RAW = 0.25
TARGET_API_P99_VS_RAW = 1.25
TARGET_REDIS_USEC_PER_CALL = 4.0
TARGET_IDLE_KIB = 2.0


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGINT / SIGTERM received."""


def _on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def _die_with_parent():
    """Child pre-exec: SIGKILL when this script dies (PR_SET_PDEATHSIG = 1)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort
        pass


class Procs:
    """Every long-running process started by the suite; stopped by pid, never by name."""

    def __init__(self) -> None:
        self.live: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict | None = None, log: Path | None = None):
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only this script, which cleans up
                preexec_fn=_die_with_parent,
            )
        finally:
            if log:
                out.close()
        self.live.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 5.0) -> None:
        if proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        self.live = [(n, p) for (n, p) in self.live if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.live)):
            try:
                self.stop(proc)
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                print(f"warning: could not stop pid {proc.pid}: {e}", file=sys.stderr)


PROCS = Procs()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check, limit: float, interval: float = 0.05):
    deadline = time.monotonic() + limit
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not there yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {limit:.0f} s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def redis_cli(port: int, *args: str, timeout: float = 30.0) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return out.stdout


def redis_info(port: int, section: str) -> dict[str, str]:
    info = {}
    for line in redis_cli(port, "INFO", section).splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.strip().split(":", 1)
            info[k] = v
    return info


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Redis:
    def __init__(self, run_dir: Path, tag: str) -> None:
        self.port = free_port()
        self.argv = [
            "taskset", "-c", CLIENT_CORE, "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no",
            "--dir", str(run_dir), "--loglevel", "warning",
        ]
        self.proc = PROCS.start(f"redis-{tag}", self.argv, log=run_dir / f"redis-{tag}.log")
        wait_until("redis-server", lambda: redis_cli(self.port, "PING").strip() == "PONG", 10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        PROCS.stop(self.proc)


# Redis Cluster (scenario g) -------------------------------------------------------------------

CLUSTER_SLOTS = 16384
# Client ports of cluster nodes: their bus ports (+10000) then lie in 25000..32767, below 55535 as
# the bus port requires, and both below Linux's ephemeral range (32768..), where free_port() and
# outgoing connections take theirs (the test harness, tests/src/cluster.rs, does the same).
CLUSTER_PORTS = (15000, 22767)


def free_cluster_port() -> int:
    """A port in CLUSTER_PORTS whose bus port (+10000) is free too (both bound, then released)."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randint(*CLUSTER_PORTS)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free cluster port pair in {CLUSTER_PORTS}")


def crc16(data: bytes) -> int:
    """CRC16-XMODEM, Redis Cluster's key hash."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def key_slot(key: str) -> int:
    """Slot of a key or shard channel (hash tag `{…}` honoured), as `CLUSTER KEYSLOT`."""
    raw = key.encode()
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1:end]
    return crc16(raw) % CLUSTER_SLOTS


class RedisCluster:
    """`shards` primaries, no replicas, each in its own directory on core 1, slots in equal
    ranges (node i owns the i-th), distinct config epochs, joined with `CLUSTER MEET`; ready
    when every node reports `cluster_state:ok`, knows every node and sees all slots assigned."""

    def __init__(self, run_dir: Path, shards: int) -> None:
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []
        try:
            for i in range(shards):
                port = free_cluster_port()
                node_dir = run_dir / f"redis-s{i + 1}"
                node_dir.mkdir(parents=True, exist_ok=True)
                argv = [
                    "taskset", "-c", CLIENT_CORE, "redis-server",
                    "--port", str(port), "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",  # in --dir
                    "--save", "", "--appendonly", "no",
                    "--dir", str(node_dir), "--loglevel", "warning",
                ]
                self.procs.append(PROCS.start(f"redis-s{i + 1}", argv, log=run_dir / f"redis-s{i + 1}.log"))
                self.ports.append(port)
            for i, (port, proc) in enumerate(zip(self.ports, self.procs)):
                wait_until(
                    f"redis-server :{port} (see {run_dir}/redis-s{i + 1}.log)",
                    lambda p=port, pr=proc: pr.poll() is None and redis_cli(p, "PING").strip() == "PONG",
                    10,
                )
            self.ranges = []
            for i, port in enumerate(self.ports):
                lo, hi = i * CLUSTER_SLOTS // shards, (i + 1) * CLUSTER_SLOTS // shards - 1
                self.ranges.append((lo, hi))
                redis_cli(port, "CLUSTER", "ADDSLOTSRANGE", str(lo), str(hi))
                redis_cli(port, "CLUSTER", "SET-CONFIG-EPOCH", str(i + 1))
            for port in self.ports[1:]:
                redis_cli(self.ports[0], "CLUSTER", "MEET", "127.0.0.1", str(port))
            wait_until("cluster_state:ok on every node", self.settled, 30, 0.1)
        except BaseException:
            self.stop()
            raise

    def settled(self) -> bool:
        for port in self.ports:
            info = redis_cli(port, "CLUSTER", "INFO")
            if not ("cluster_state:ok" in info
                    and f"cluster_known_nodes:{len(self.ports)}" in info
                    and f"cluster_slots_ok:{CLUSTER_SLOTS}" in info):
                return False
        return True

    @property
    def urls_csv(self) -> str:
        return ",".join(f"redis://127.0.0.1:{p}" for p in self.ports)

    def shard_of_slot(self, slot: int) -> int:
        return next(i for i, (lo, hi) in enumerate(self.ranges) if lo <= slot <= hi)

    def stop(self) -> None:
        for proc in self.procs:
            PROCS.stop(proc)


class Resp:
    """A minimal RESP client on one socket (the sampler's; `redis-cli` forks per call)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def info(self, *sections: str) -> dict[str, str]:
        args = ["INFO", *sections]
        self.sock.sendall(f"*{len(args)}\r\n".encode()
                          + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args))
        head = self._line()
        if not head.startswith(b"$"):
            raise RuntimeError(f"unexpected INFO reply {head[:80]!r}")
        n = int(head[1:])
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        body, self.buf = self.buf[:n], self.buf[n + 2:]
        out = {}
        for line in body.decode().splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out

    def close(self) -> None:
        self.sock.close()


def cmdstat(info: dict[str, str], cmd: str) -> tuple[int, float]:
    """(calls, usec) of `cmdstat_<cmd>` in an `INFO commandstats` reply (0, 0 if absent)."""
    s = info.get(f"cmdstat_{cmd}", "")
    calls = re.search(r"\bcalls=(\d+)", s)
    usec = re.search(r"\busec=(\d+)", s)
    return (int(calls.group(1)) if calls else 0, float(usec.group(1)) if usec else 0.0)


def info_cpu_seconds(info: dict[str, str]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class ShardSampler:
    """Samples `INFO cpu commandstats` of every cluster node every `interval` seconds in a
    background thread: (time, CPU seconds, EVALSHA calls) per node."""

    def __init__(self, ports: list[int], interval: float = 0.5) -> None:
        self.ports = ports
        self.interval = interval
        self.samples: list[list[tuple[float, float, int]]] = [[] for _ in ports]
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shard-sampler", daemon=True)

    def _run(self) -> None:
        conns = []
        try:
            conns = [Resp(p) for p in self.ports]
            while True:
                for i, c in enumerate(conns):
                    info = c.info("cpu", "commandstats")
                    self.samples[i].append(
                        (time.monotonic(), info_cpu_seconds(info), cmdstat(info, "evalsha")[0]))
                if self._stop.wait(self.interval):
                    break
        except Exception as e:  # noqa: BLE001 - reported with the results
            self.error = f"{type(e).__name__}: {e}"
        finally:
            for c in conns:
                c.close()

    def __enter__(self) -> ShardSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def mean_cpu_percent(self, i: int) -> float | None:
        """Node i's CPU % between the first and the last sample."""
        s = self.samples[i]
        if len(s) < 2:
            return None
        return round((s[-1][1] - s[0][1]) * 100 / max(s[-1][0] - s[0][0], 1e-9), 1)

    def busy(self, i: int, min_rate: float = 100.0) -> dict:
        """Node i's CPU µs per EVALSHA (all of the node's CPU in the intervals counted, writes to
        subscribers included) over the sampling intervals in which it ran ≥ `min_rate` EVALSHA/s
        (`usec_per_event_busy`) and over those in which it ran ≥ half its highest interval rate
        (`usec_per_event`: the cost near the max rate, where a wake-up serves many events), and its
        busiest interval's CPU %."""
        s = self.samples[i]
        intervals = []
        for (t0, c0, n0), (t1, c1, n1) in zip(s, s[1:]):
            dt = max(t1 - t0, 1e-9)
            intervals.append((dt, c1 - c0, n1 - n0))
        top = max((n / dt for dt, _, n in intervals), default=0.0)

        def ratio(floor):
            chosen = [(c, n) for dt, c, n in intervals if n / dt >= floor and n > 0]
            calls = sum(n for _, n in chosen)
            return (sum(c for c, _ in chosen) * 1e6 / calls if calls else None), calls

        near, near_calls = ratio(max(min_rate, top / 2))
        busy, busy_calls = ratio(min_rate)
        peak = max((c * 100 / dt for dt, c, _ in intervals), default=0.0)
        return {"usec_per_event": near, "near_calls": int(near_calls), "top_rate": round(top),
                "usec_per_event_busy": busy, "busy_calls": int(busy_calls),
                "peak_cpu_percent": round(peak, 1)}


class Gateway:
    def __init__(self, run_dir: Path, tag: str, redis_url: str | None,
                 cluster_urls: str | None = None, args: list[str] | None = None) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.argv = [
            "taskset", "-c", GATEWAY_CORE, str(GATEWAY_BIN),
            "--listen", f"127.0.0.1:{self.port}",
            "--admin-listen", f"127.0.0.1:{self.admin_port}",
            "--log-format", "json", "--log", "warn",
            "--pre-drain-delay", "0s", "--drain-window", "0s",
            *(args or []),
        ]
        env = dict(os.environ, GATEWAY_JWT_SECRET=JWT_SECRET, GATEWAY_API_KEY=API_KEY)
        env.pop("REDIS_URL", None)
        env.pop("REDIS_CLUSTER_URLS", None)
        if redis_url:
            env["REDIS_URL"] = redis_url
        if cluster_urls:
            env["REDIS_CLUSTER_URLS"] = cluster_urls
        self.proc = PROCS.start(f"gateway-{tag}", self.argv, env=env, log=run_dir / f"gateway-{tag}.log")
        wait_until(
            f"gateway {tag} /readyz",
            lambda: self.proc.poll() is None and http_get(self.admin_url + "/readyz")[0] == 200,
            30,
            0.1,
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"gateway {tag} exited; see {run_dir}/gateway-{tag}.log")

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the gateway: same pid

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def connections(self) -> int:
        _, text = http_get(self.admin_url + "/metrics")
        m = re.search(r"^gleepost_gateway_connections (\d+)", text, re.M)
        return int(m.group(1)) if m else -1

    def stop(self) -> None:
        PROCS.stop(self.proc, timeout=10)


class LeanForwarder:
    """The lean forwarder baseline (crates/lean-forwarder, never a product) on core 0: WebSocket
    plus one Redis subscription; no health endpoint, so ready = its port accepts."""

    def __init__(self, run_dir: Path, tag: str, redis_url: str) -> None:
        self.port = free_port()
        self.argv = [
            "taskset", "-c", GATEWAY_CORE, str(LEAN_BIN),
            "--listen", f"127.0.0.1:{self.port}", "--redis-url", redis_url,
        ]
        self.proc = PROCS.start(f"lean-{tag}", self.argv, log=run_dir / f"lean-{tag}.log")

        def listening() -> bool:
            if self.proc.poll() is not None:
                return False
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        try:
            wait_until(f"lean forwarder {tag} listening", listening, 10)
        except RuntimeError:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lean forwarder {tag} exited; see {run_dir}/lean-{tag}.log") from None
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs it: same pid

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self) -> None:
        PROCS.stop(self.proc)


class Env:
    """A fresh Redis (or, with `shards`, a fresh Redis Cluster) and `nodes` gateways (with
    `gateway_args`) or, with `lean`, `nodes` lean forwarders, for one run."""

    def __init__(self, run_dir: Path, nodes: int, redis: bool = True, shards: int = 0,
                 gateway_args: list[str] | None = None, lean: bool = False) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.redis = Redis(run_dir, "r") if redis and not shards else None
        self.cluster: RedisCluster | None = None
        self.gateways: list = []
        try:
            if shards:
                self.cluster = RedisCluster(run_dir, shards)
            for i in range(nodes):
                if lean:
                    self.gateways.append(LeanForwarder(run_dir, f"n{i + 1}", self.redis.url))
                    continue
                self.gateways.append(Gateway(
                    run_dir, f"n{i + 1}", self.redis.url if self.redis else None,
                    self.cluster.urls_csv if self.cluster else None, gateway_args,
                ))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for g in self.gateways:
            g.stop()
        if self.redis:
            self.redis.stop()
        if self.cluster:
            self.cluster.stop()

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Load generator
# --------------------------------------------------------------------------------------------

COMMANDS: dict[str, list[str]] = {}


def shown(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def loadgen(scenario: str, run_dir: Path, args: list[str], max_seconds: int, extra_env=None) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    json_path = run_dir / "report.json"
    argv = [
        "taskset", "-c", CLIENT_CORE, str(LOADGEN_BIN), *args,
        "--max-seconds", str(max_seconds), "--json", str(json_path),
    ]
    env = dict(os.environ, GATEWAY_JWT_SECRET=JWT_SECRET, GATEWAY_API_KEY=API_KEY)
    env.update(extra_env or {})
    COMMANDS.setdefault(scenario, [])
    generic = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:$PORT", shown(argv).replace(str(ROOT) + "/", ""))
    generic = re.sub(r"--server-pid \d+", "--server-pid $PID", generic)
    generic = re.sub(r"\S*/report\.json", "report.json", generic)
    if generic not in COMMANDS[scenario]:
        COMMANDS[scenario].append(generic)
    log = run_dir / "loadgen.log"
    p = PROCS.start("loadgen", argv, env=env, log=log)
    try:
        rc = p.wait(timeout=max_seconds + 30)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{scenario}: loadgen did not finish; see {log}") from None
    finally:
        PROCS.stop(p)
    if rc != 0:
        tail = (run_dir / "loadgen.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{scenario}: loadgen exited with {rc}:\n{tail}")
    return json.loads(json_path.read_text())


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall, idle + iowait CPU seconds of the machine, CPU seconds of this script and its
    waited-for children)."""
    cols = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    idle = (int(cols[3]) + int(cols[4])) / os.sysconf("SC_CLK_TCK")
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return time.monotonic(), idle, ours


def foreign_cpu_percent(before, after) -> float:
    """≈ CPU used by processes this suite did not start, in % of all cores, between snapshots:
    (capacity − idle) − our CPU (ours includes the network interrupt work done for our sockets)."""
    ncpu = os.cpu_count() or 1
    wall = max(after[0] - before[0], 1e-9)
    busy = wall * ncpu - (after[1] - before[1])
    other = busy - (after[2] - before[2])
    return max(0.0, other * 100 / (wall * ncpu))


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


class Suite:
    def __init__(self, opts) -> None:
        self.o = opts
        self.out = ROOT / ".bench" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.results: dict[str, dict] = {}
        self.loads: dict[str, str] = {}
        self.foreign: dict[str, float] = {}

    def dir(self, scenario: str, run: int) -> Path:
        return self.out / scenario / f"run{run}"

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # a. RSS per idle connection ---------------------------------------------------------------
    def idle_rss(self) -> None:
        n = self.o.idle_connections
        runs = []
        for r in range(self.o.runs):
            d = self.dir("a-idle-rss", r)
            with Env(d, nodes=1) as env:
                g = env.gateways[0]
                rep = loadgen("a", d, [
                    "idle", "-n", str(n), "--url", g.ws, "--server-pid", str(g.pid),
                    "--settle", "2s", "--hold", "2s",
                ], 90)
            self.log(f"a run {r}: {rep['established']}/{n} established, "
                     f"{rep['server_rss_kib_per_conn']} KiB/conn, loadgen {rep['loadgen_cpu_percent']} %")
            runs.append(rep)
        self.results["a"] = {
            "runs": runs,
            "kib_per_conn": median(r["server_rss_kib_per_conn"] for r in runs),
            "established": median(r["established"] for r in runs),
            "rss_before": median(r["server_rss_kib_before"] for r in runs),
            "rss_after": median(r["server_rss_kib_after"] for r in runs),
            "loadgen_cpu": median(r["connect_cpu"]["loadgen_cpu_percent"] for r in runs),
            "loadgen_cpu_hold": median(r["hold_cpu"]["loadgen_cpu_percent"] for r in runs),
            "server_cpu_hold": median(r["hold_cpu"].get("server_cpu_percent") for r in runs),
        }

    # b, h. max deliveries/s: raw, history script, publish API, batch API, lean forwarder ---------
    # key: (directory, publish path, start-rate option, runs option, what runs the WebSocket side)
    MAX_RATE_PLAN = {
        "b": ("b-max-rate-redis", "redis", "start_rate", "runs_max_rate", "gateway"),
        "b2": ("b2-max-rate-redis-history", "redis-history", "start_rate_history", "runs_max_rate", "gateway"),
        "h": ("h-max-rate-api-history", "http", "start_rate_api", "runs_api", "gateway"),
        "h0": ("h0-max-rate-api-no-history", "http", "start_rate_api_off", "runs_api", "no-history"),
        "hb": ("hb-max-rate-api-batch", "http-batch", "start_rate_batch", "runs_api", "gateway"),
        "h2": ("h2-max-rate-api-http2", "http", "start_rate_api", "runs_api", "gateway"),
        "lf": ("lf-max-rate-lean-forwarder", "redis", "start_rate_lean", "runs_api", "lean"),
    }
    # What `--only` names: b and h are max-rate groups, c runs c2 too.
    GROUPS = {"b": ("b", "b2"), "h": ("h", "h0", "hb", "h2", "lf"), "c": ("c", "c2", "c3")}

    def max_rates(self, groups: list[str]) -> None:
        """The max-rate scenarios of `groups` (b: raw `PUBLISH` and history script; h: publish API
        with history on and off, batch API, lean forwarder), runs interleaved round by round so
        that slow and fast periods of the host affect all alike."""
        keys = [k for g in groups for k in self.GROUPS[g] if getattr(self.o, self.MAX_RATE_PLAN[k][3]) > 0]
        if not keys:
            return
        runs: dict[str, list[dict]] = {k: [] for k in keys}
        rounds = max(getattr(self.o, self.MAX_RATE_PLAN[k][3]) for k in keys)
        for r in range(rounds):
            for key in keys:
                if r < getattr(self.o, self.MAX_RATE_PLAN[key][3]):
                    runs[key].append(self.max_rate_run(key, r))
        for key in keys:
            self.summarize_max_rate(key, self.MAX_RATE_PLAN[key][1], runs[key])

    def max_rate_run(self, key: str, r: int) -> dict:
        dirname, publish, start_opt, _, server = self.MAX_RATE_PLAN[key]
        d = self.dir(dirname, r)
        gateway_args = ["--history-size", "0"] if server == "no-history" else None
        with Env(d, nodes=2, gateway_args=gateway_args, lean=server == "lean") as env:
            g1, g2 = env.gateways
            port = env.redis.port
            redis_cli(port, "CONFIG", "RESETSTAT")
            rcpu0 = proc_cpu_seconds(env.redis.proc.pid)
            gcpu0 = sum(proc_cpu_seconds(g.pid) for g in env.gateways)
            if publish.startswith("http"):
                via = ["--publish", publish, "--admin-url", g1.admin_url,
                       "--http-connections", str(self.o.http_connections_batch if publish == "http-batch"
                                                 else self.o.http_connections_api)]
                if publish == "http-batch":
                    via += ["--batch-size", str(self.o.batch_size)]
                if key == "h2":
                    via.append("--http2")
            else:
                via = ["--publish", publish, "--redis-url", env.redis.url]
            t0 = time.monotonic()
            rep = loadgen(key, d, [
                "max-rate", "-n", str(self.o.conns), "-u", str(self.o.conns // 2),
                "--url", g1.ws, "--url", g2.ws, *via,
                "--start-rate", str(getattr(self.o, start_opt)), "--factor", str(self.o.factor),
                "--step", self.o.step, "--step-warmup", "1s", "--drain", "2s",
                "--max-steps", str(self.o.max_steps), "--retries", str(self.o.retries),
                "--server-pid", str(g1.pid), "--server-pid", str(g2.pid),
            ], 240)
            wall = time.monotonic() - t0
            rep["redis_cpu_percent_avg"] = round(
                (proc_cpu_seconds(env.redis.proc.pid) - rcpu0) * 100 / wall, 1)
            rep["redis_cpu_seconds"] = round(proc_cpu_seconds(env.redis.proc.pid) - rcpu0, 3)
            rep["gateway_cpu_seconds"] = round(sum(proc_cpu_seconds(g.pid) for g in env.gateways) - gcpu0, 3)
            stats = redis_info(port, "commandstats")
            rep["redis_commandstats"] = {
                k: v for k, v in stats.items()
                if k in ("cmdstat_publish", "cmdstat_evalsha", "cmdstat_spublish")
            }
        rep.update(publish_costs(rep, "evalsha" if publish in ("redis-history", "http-batch")
                                 or (publish == "http" and server != "no-history") else "publish"))
        best = rep.get("delivered_per_sec")
        p99 = (rep.get("latency_us") or {}).get("p99")
        extra = ""
        if publish.startswith("http"):
            extra = (f"; gateways {fmt(rep.get('gw_usec_per_event'), 1)} µs/event at the max "
                     f"({fmt(rep.get('gw_usec_per_event_run'), 1)} over the run), Redis "
                     f"{fmt(rep.get('redis_usec_per_call'), 2)} µs/call, "
                     f"{fmt(rep.get('redis_usec_per_copy'), 2)} µs/user copy")
        self.log(f"{key} run {r}: {rep.get('publish_rate')} events/s, {best} deliveries/s p99 {p99} µs"
                 f"{extra}; stop: {rep.get('stop_reason')}")
        return rep

    def summarize_max_rate(self, key: str, publish: str, runs: list[dict]) -> None:
        def usec(rep, cmd):
            s = rep["redis_commandstats"].get(f"cmdstat_{cmd}", "")
            m = re.search(r"usec_per_call=([\d.]+)", s)
            return float(m.group(1)) if m else None

        passing = [r for r in runs if r.get("delivered_per_sec") is not None]
        self.results[key] = {
            "publish": publish,
            "runs": runs,
            "deliveries": median(r.get("delivered_per_sec") for r in runs),
            "deliveries_range": (
                min((r.get("delivered_per_sec") or 0) for r in runs),
                max((r.get("delivered_per_sec") or 0) for r in runs),
            ),
            "events": median(r.get("publish_rate") for r in passing),
            "events_range": (
                min((r.get("publish_rate") or 0) for r in passing) if passing else None,
                max((r.get("publish_rate") or 0) for r in passing) if passing else None,
            ),
            "p99_us": median((r.get("latency_us") or {}).get("p99") for r in passing),
            "p50_us": median((r.get("latency_us") or {}).get("p50") for r in passing),
            "events_per_request": median(r.get("events_per_request") for r in passing),
            "loadgen_cpu": median(r.get("loadgen_cpu_percent") for r in passing),
            "server_cpu": median((r.get("cpu") or {}).get("server_cpu_percent") for r in passing),
            "per_cpu": median(
                r["delivered_per_sec"] * 100 / r["cpu"]["server_cpu_percent"]
                for r in passing
                if (r.get("cpu") or {}).get("server_cpu_percent")
            ),
            "stops": [r.get("stop_reason") for r in runs],
            "redis_cpu_avg": median(r["redis_cpu_percent_avg"] for r in runs),
            "usec_publish": median(usec(r, "publish") for r in runs),
            "usec_evalsha": median(usec(r, "evalsha") for r in runs),
            **{k: median(r.get(k) for r in runs) for k in PUBLISH_COST_KEYS},
        }

    # c. p99 at 5,000 events/s over 2,000 connections: raw PUBLISH (c), publish API (c2) ----------
    def fanout(self) -> None:
        """c (raw `PUBLISH`), c2 (publish API, history on) and c3 (c2 over HTTP/2), runs
        interleaved like b and b2; c2 and c3 are left out with `--runs-api 0`."""
        runs: dict[str, list[dict]] = {"c": [], "c2": [], "c3": []}
        for r in range(self.o.runs):
            runs["c"].append(self.fanout_run("c", r))
            if self.o.runs_api > 0:
                runs["c2"].append(self.fanout_run("c2", r))
                runs["c3"].append(self.fanout_run("c3", r))
        for key, reps in runs.items():
            if not reps:
                continue
            self.results[key] = {
                "runs": reps,
                "p50_us": median(r["latency_us"]["p50"] for r in reps),
                "p99_us": median(r["latency_us"]["p99"] for r in reps),
                "p999_us": median(r["latency_us"]["p999"] for r in reps),
                "max_us": median(r["latency_us"]["max"] for r in reps),
                "deliveries": median(r["delivered_per_sec"] for r in reps),
                "lost": median(r["lost"] for r in reps),
                "publish_errors": median(r["publish_errors"] for r in reps),
                "loadgen_cpu": median(r["loadgen_cpu_percent"] for r in reps),
                "server_cpu": median(r["cpu"].get("server_cpu_percent") for r in reps),
                **{k: median(r.get(k) for r in reps) for k in PUBLISH_COST_KEYS},
            }

    def fanout_run(self, key: str, r: int) -> dict:
        d = self.dir({"c": "c-fanout", "c2": "c2-fanout-api-history",
                      "c3": "c3-fanout-api-http2"}[key], r)
        with Env(d, nodes=2) as env:
            g1, g2 = env.gateways
            if key == "c":
                via = ["--publish", "redis", "--redis-url", env.redis.url]
            else:
                via = ["--publish", "http", "--admin-url", g1.admin_url,
                       "--http-connections", str(self.o.http_connections_api)]
                if key == "c3":
                    via.append("--http2")
            port = env.redis.port
            redis_cli(port, "CONFIG", "RESETSTAT")
            rcpu0 = proc_cpu_seconds(env.redis.proc.pid)
            gcpu0 = sum(proc_cpu_seconds(g.pid) for g in env.gateways)
            rep = loadgen(key, d, [
                "fanout", "-n", "2000", "-u", "1000", "--url", g1.ws, "--url", g2.ws, *via,
                "--rate", "5000", "--warmup", "2s", "--duration", self.o.fanout_duration,
                "--server-pid", str(g1.pid), "--server-pid", str(g2.pid),
            ], 90)
            rep["redis_cpu_seconds"] = round(proc_cpu_seconds(env.redis.proc.pid) - rcpu0, 3)
            rep["gateway_cpu_seconds"] = round(sum(proc_cpu_seconds(g.pid) for g in env.gateways) - gcpu0, 3)
            stats = redis_info(port, "commandstats")
            rep["redis_commandstats"] = {
                k: v for k, v in stats.items()
                if k in ("cmdstat_publish", "cmdstat_evalsha", "cmdstat_spublish")
            }
        rep.update(publish_costs(rep, "publish" if key == "c" else "evalsha"))
        lat = rep["latency_us"]
        self.log(f"{key} run {r}: p50 {lat['p50']} p99 {lat['p99']} p99.9 {lat['p999']} µs, "
                 f"{rep['delivered_per_sec']} deliveries/s, lost {rep['lost']}, "
                 f"publish errors {rep['publish_errors']}")
        return rep

    # d. connection accepts per second ---------------------------------------------------------
    def connect_rate(self) -> None:
        n = self.o.accept_connections
        runs = []
        for r in range(self.o.runs):
            d = self.dir("d-connect-rate", r)
            with Env(d, nodes=1) as env:
                g = env.gateways[0]
                rep = loadgen("d", d, [
                    "connect-rate", "-n", str(n), "--url", g.ws, "--server-pid", str(g.pid),
                    "--concurrency", "256", "--settle", "0s",
                ], 90)
            self.log(f"d run {r}: {rep['accepts_per_sec']} accepts/s, {rep['established']}/{n}, "
                     f"handshake p99 {rep['handshake_us']['p99']} µs")
            runs.append(rep)
        self.results["d"] = {
            "runs": runs,
            "accepts": median(r["accepts_per_sec"] for r in runs),
            "established": median(r["established"] for r in runs),
            "failed": median(r["failed"] for r in runs),
            "hs_p50": median(r["handshake_us"]["p50"] for r in runs),
            "hs_p99": median(r["handshake_us"]["p99"] for r in runs),
            "loadgen_cpu": median(r["connect_cpu"]["loadgen_cpu_percent"] for r in runs),
            "server_cpu": median(r["connect_cpu"].get("server_cpu_percent") for r in runs),
        }

    # e. Redis connections per node ------------------------------------------------------------
    def redis_conns(self) -> None:
        counts = {}
        d = self.dir("e-redis-connections", 0)
        with Env(d, nodes=2) as env:
            for n in (100, self.o.idle_connections):
                per_node = []
                for r in range(self.o.runs):
                    rd = d / f"n{n}-run{r}"
                    rd.mkdir(parents=True, exist_ok=True)
                    argv = [
                        "taskset", "-c", CLIENT_CORE, str(LOADGEN_BIN), "idle", "-n", str(n),
                        "-u", str(max(1, n // 2)),
                        "--url", env.gateways[0].ws, "--url", env.gateways[1].ws,
                        "--settle", "1s", "--hold", "6s", "--max-seconds", "90",
                        "--json", str(rd / "report.json"),
                    ]
                    generic = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:$PORT",
                                     shown(argv).replace(str(ROOT) + "/", ""))
                    generic = re.sub(r"\S*/report\.json", "report.json", generic)
                    if generic not in COMMANDS.setdefault("e", []):
                        COMMANDS["e"].append(generic)
                    env_vars = dict(os.environ, GATEWAY_JWT_SECRET=JWT_SECRET)
                    p = PROCS.start("loadgen", argv, env=env_vars, log=rd / "loadgen.log")
                    try:
                        wait_until(
                            f"{n} connections",
                            lambda: sum(g.connections() for g in env.gateways) >= n,
                            60, 0.2,
                        )
                        per_node.append(self.count_redis_clients(env))
                        p.wait(timeout=120)
                    finally:
                        PROCS.stop(p)
                    self.log(f"e {n} connections run {r}: Redis connections per node {per_node[-1]}")
                counts[n] = per_node
        self.results["e"] = {"counts": counts, "command": "redis-cli CLIENT LIST"}

    def count_redis_clients(self, env: Env) -> list[int]:
        """Redis clients per gateway node: CLIENT LIST addresses mapped to pids with `ss`."""
        clients = redis_cli(env.redis.port, "CLIENT", "LIST").splitlines()
        ports = set()
        for line in clients:
            m = re.search(r"\baddr=127\.0\.0\.1:(\d+)", line)
            if m:
                ports.add(int(m.group(1)))
        ss = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True,
                            text=True, timeout=30, check=True).stdout
        per_pid: dict[int, int] = {}
        for line in ss.splitlines():
            cols = line.split()
            if len(cols) < 4:
                continue
            local, peer = cols[2], cols[3]
            if not peer.endswith(f":{env.redis.port}"):
                continue
            try:
                lport = int(local.rsplit(":", 1)[1])
            except ValueError:
                continue
            m = re.search(r"pid=(\d+)", line)
            if lport in ports and m:
                pid = int(m.group(1))
                per_pid[pid] = per_pid.get(pid, 0) + 1
        return [per_pid.get(g.pid, 0) for g in env.gateways]

    # f. Redis memory and cost of history ------------------------------------------------------
    def redis_costs(self) -> None:
        runs = []
        users, events = 100, self.o.history_events
        for r in range(self.o.runs):
            d = self.dir("f-redis-history-memory", r)
            with Env(d, nodes=1) as env:
                g = env.gateways[0]
                port = env.redis.port
                before = int(redis_info(port, "memory")["used_memory"])
                rate = 25_000
                duration = events / rate
                rep = loadgen("f", d, [
                    "fanout", "-n", str(users), "-u", str(users), "--url", g.ws,
                    "--publish", "redis-history", "--redis-url", env.redis.url,
                    "--payload-bytes", "176", "--rate", str(rate), "--warmup", "0s",
                    "--duration", f"{duration}s", "--drain", "3s",
                ], 90)
                after = int(redis_info(port, "memory")["used_memory"])
                stored = sum(
                    int(redis_cli(port, "XLEN", f"gp:hist:{{{u}}}").strip() or 0)
                    for u in range(1, users + 1)
                )
            per_1000 = (after - before) / max(stored, 1) * 1000
            self.log(f"f run {r}: {stored} events stored, used_memory {before} -> {after}, "
                     f"{per_1000 / 1024:.1f} KiB per 1,000 events")
            runs.append({"report": rep, "before": before, "after": after, "stored": stored,
                         "kib_per_1000": per_1000 / 1024})
        # Publish cost, Redis alone on core 1, redis-benchmark on core 0, no subscribers.
        bench = []
        d = self.dir("f-redis-publish-cost", 0)
        d.mkdir(parents=True, exist_ok=True)
        redis = Redis(d, "cost")
        try:
            sha = redis_cli(redis.port, "SCRIPT", "LOAD", publish_script()).strip()
            event = '{"type":"bench","data":{"seq":1,"t":2,"u":3,"pad":"' + "x" * 150 + '"}}'
            variants = {
                "PUBLISH": ["PUBLISH", "c:__rand_int__", event],
                # One user per call (a lone publish), TTLs not refreshed (the common case).
                "EVALSHA": ["EVALSHA", sha, "2", "gp:hist:{__rand_int__}", "gp:epoch:{__rand_int__}",
                            "1000", "90000000", "benchepoch0", "PUBLISH", "1", event,
                            "c:__rand_int__", "1", "0"],
            }
            for r in range(self.o.runs):
                row = {}
                for name, cmd in variants.items():
                    redis_cli(redis.port, "FLUSHALL")
                    redis_cli(redis.port, "CONFIG", "RESETSTAT")
                    argv = ["taskset", "-c", GATEWAY_CORE, "redis-benchmark", "-p", str(redis.port),
                            "-n", str(self.o.bench_requests), "-P", "32", "-c", "4", "-r", "1000",
                            "-q", "--csv", *cmd]
                    generic = shown(argv).replace(str(redis.port), "$PORT").replace(sha, "$SHA")
                    if generic not in COMMANDS.setdefault("f", []):
                        COMMANDS["f"].append(generic)
                    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
                    rps = float(re.findall(r'"([\d.]+)"', out)[0])
                    stat = redis_info(redis.port, "commandstats").get(f"cmdstat_{name.lower()}", "")
                    m = re.search(r"usec_per_call=([\d.]+)", stat)
                    row[name] = {"rps": rps, "usec_per_call": float(m.group(1)) if m else None}
                self.log(f"f cost run {r}: {row}")
                bench.append(row)
        finally:
            redis.stop()
        self.results["f"] = {
            "runs": runs,
            "kib_per_1000": median(r["kib_per_1000"] for r in runs),
            "stored": median(r["stored"] for r in runs),
            "loadgen_cpu": median(r["report"]["loadgen_cpu_percent"] for r in runs),
            "bench": bench,
            "publish_rps": median(b["PUBLISH"]["rps"] for b in bench),
            "evalsha_rps": median(b["EVALSHA"]["rps"] for b in bench),
            "publish_usec": median(b["PUBLISH"]["usec_per_call"] for b in bench),
            "evalsha_usec": median(b["EVALSHA"]["usec_per_call"] for b in bench),
        }

    # g. 3-shard Redis Cluster, history on, publish API (issue 10) ------------------------------
    def cluster_max_rate(self) -> None:
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        runs = []
        for r in range(self.o.runs):
            runs.append(self.cluster_max_rate_run(r))
        passing = [r for r in runs if r.get("delivered_per_sec") is not None]

        def shard_median(field):
            return [median(r["shards"][i][field] for r in runs) for i in range(self.o.shards)]

        self.results["g"] = {
            "started": started,
            "git": cmd_version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
            "runs": runs,
            "shards": self.o.shards,
            "deliveries": median(r.get("delivered_per_sec") for r in runs),
            "deliveries_range": (
                min((r.get("delivered_per_sec") or 0) for r in runs),
                max((r.get("delivered_per_sec") or 0) for r in runs),
            ),
            "events": median(r.get("publish_rate") for r in passing),
            "p50_us": median((r.get("latency_us") or {}).get("p50") for r in passing),
            "p99_us": median((r.get("latency_us") or {}).get("p99") for r in passing),
            "loadgen_cpu": median(r.get("loadgen_cpu_percent") for r in passing),
            "server_cpu": median((r.get("cpu") or {}).get("server_cpu_percent") for r in passing),
            "usec_per_event": shard_median("usec_per_event"),
            "usec_evalsha": shard_median("usec_per_evalsha"),
            "usec_spublish": shard_median("usec_per_spublish"),
            "users": runs[0]["shards_users"],
            "users_max_mean": runs[0]["users_max_mean"],
            "calls_max_mean": median(r["calls_max_mean"] for r in runs),
        }

    def cluster_max_rate_run(self, r: int) -> dict:
        d = self.dir("g-cluster-max-rate-http", r)
        users = self.o.conns // 2
        with Env(d, nodes=2, shards=self.o.shards) as env:
            g1, g2 = env.gateways
            ports = env.cluster.ports
            for port in ports:
                redis_cli(port, "CONFIG", "RESETSTAT")
            before = [redis_info(p, "cpu") for p in ports]
            # Idle baseline (cluster bus, the gateways' probes and slot-map checks), then the run.
            with ShardSampler(ports) as idle:
                time.sleep(2)
            t0 = time.monotonic()
            with ShardSampler(ports) as sampler:
                rep = loadgen("g", d, [
                    "max-rate", "-n", str(self.o.conns), "-u", str(users),
                    "--url", g1.ws, "--url", g2.ws,
                    "--publish", "http", "--admin-url", g1.admin_url,
                    "--http-connections", str(self.o.http_connections),
                    "--start-rate", str(self.o.start_rate_cluster), "--factor", str(self.o.factor),
                    "--step", self.o.step, "--step-warmup", "1s", "--drain", "2s",
                    "--max-steps", str(self.o.max_steps), "--retries", str(self.o.retries),
                    "--server-pid", str(g1.pid), "--server-pid", str(g2.pid),
                ], 240)
            wall = time.monotonic() - t0
            if sampler.error or idle.error:
                raise RuntimeError(f"g: sampling INFO failed: {sampler.error or idle.error}")
            stats = [redis_info(p, "commandstats") for p in ports]
            after = [redis_info(p, "cpu") for p in ports]
            users_per_shard = [0] * len(ports)
            for u in range(1, users + 1):  # loadgen's default --first-user 1
                users_per_shard[env.cluster.shard_of_slot(key_slot(f"gp:hist:{{{u}}}"))] += 1
            # Cross-check the CRC16 against Redis for a few users.
            for u in (1, users // 2, users):
                got = int(redis_cli(ports[0], "CLUSTER", "KEYSLOT", f"gp:hist:{{{u}}}").strip())
                if got != key_slot(f"gp:hist:{{{u}}}"):
                    raise RuntimeError(f"g: slot of user {u}: Redis says {got}, the script {key_slot(f'gp:hist:{{{u}}}')}")
            shards = []
            for i, port in enumerate(ports):
                ev_calls, ev_usec = cmdstat(stats[i], "evalsha")
                ro_calls, ro_usec = cmdstat(stats[i], "evalsha_ro")
                sp_calls, sp_usec = cmdstat(stats[i], "spublish")
                cpu = info_cpu_seconds(after[i]) - info_cpu_seconds(before[i])
                busy = sampler.busy(i)
                idle_cpu = idle.mean_cpu_percent(i)
                shards.append({
                    "port": port, "slots": env.cluster.ranges[i], "users": users_per_shard[i],
                    "evalsha_calls": ev_calls, "usec_per_evalsha": ev_usec / ev_calls if ev_calls else None,
                    "evalsha_ro_calls": ro_calls, "usec_per_evalsha_ro": ro_usec / ro_calls if ro_calls else None,
                    "spublish_calls": sp_calls, "usec_per_spublish": sp_usec / sp_calls if sp_calls else None,
                    "cpu_seconds": round(cpu, 3), "cpu_percent_avg": round(cpu * 100 / wall, 1),
                    "usec_per_event_run": cpu * 1e6 / ev_calls if ev_calls else None,
                    "usec_per_event": busy["usec_per_event"], "near_calls": busy["near_calls"],
                    "top_rate": busy["top_rate"], "usec_per_event_busy": busy["usec_per_event_busy"],
                    "busy_calls": busy["busy_calls"],
                    "peak_cpu_percent": busy["peak_cpu_percent"], "idle_cpu_percent": idle_cpu,
                })
        rep["shards"] = shards
        rep["shards_users"] = users_per_shard
        rep["users_max_mean"] = max(users_per_shard) / statistics.mean(users_per_shard)
        calls = [s["evalsha_calls"] for s in shards]
        rep["calls_max_mean"] = max(calls) / statistics.mean(calls) if sum(calls) else None
        rep["wall_seconds"] = round(wall, 1)
        p99 = (rep.get("latency_us") or {}).get("p99")
        self.log(f"g run {r}: {rep.get('publish_rate')} events/s, {rep.get('delivered_per_sec')} deliveries/s "
                 f"p99 {p99} µs; stop: {rep.get('stop_reason')}")
        for i, s in enumerate(shards):
            self.log(f"g run {r} shard {i + 1}: {s['users']} users, {s['evalsha_calls']} EVALSHA "
                     f"({fmt(s['usec_per_evalsha'], 2)} µs), {s['spublish_calls']} SPUBLISH "
                     f"({fmt(s['usec_per_spublish'], 2)} µs), CPU {fmt(s['usec_per_event'], 2)} µs/event near max "
                     f"({s['top_rate']}/s), {fmt(s['usec_per_event_busy'], 2)} busy, "
                     f"{fmt(s['usec_per_event_run'], 2)} whole run, peak {s['peak_cpu_percent']} %")
        return rep

    def run(self, only: set[str]) -> None:
        # b and h are one interleaved step when both run (the same sitting for their ratios).
        groups = [g for g in ("b", "h") if not only or g in only]
        steps = [
            ("a", self.idle_rss),
            ("+".join(groups) or "b", lambda: self.max_rates(groups)),
            ("c", self.fanout),
            ("d", self.connect_rate),
            ("e", self.redis_conns),
            ("f", self.redis_costs),
            ("g", self.cluster_max_rate),
        ]
        for key, fn in steps:
            parts = key.split("+")
            if only and not only.intersection(parts):
                continue
            self.loads[key] = loadavg()
            self.log(f"scenario {key} (load average {self.loads[key]})")
            started = time.monotonic()
            snap = cpu_snapshot()
            fn()
            seconds = round(time.monotonic() - started, 1)
            for part in parts:
                # The scenarios this step ran (b and h name groups: b2, h0, hb, lf have results too).
                for k in self.GROUPS.get(part, (part,)):
                    if k in self.results:
                        self.results[k]["seconds"] = seconds
            self.foreign[key] = foreign_cpu_percent(snap, cpu_snapshot())
            self.log(f"scenario {key}: other processes used {self.foreign[key]:.1f} % of the machine")
            (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))

    def foreign_of(self, scenario: str) -> float:
        """Other processes' CPU share during the step that ran `scenario` (b and h may share one)."""
        return next((v for k, v in self.foreign.items() if scenario in k.split("+")), 0.0)


PUBLISH_COST_KEYS = (
    "events_total", "gw_usec_per_event", "gw_usec_per_event_run", "redis_cmd", "redis_calls",
    "redis_usec_per_call", "redis_usec_per_copy", "users_per_call", "redis_cpu_usec_per_event",
    "redis_cpu_usec_per_call",
)


def publish_costs(rep: dict, cmd: str) -> dict:
    """CPU per published event of one loadgen run (max-rate or fanout): the gateways' (or lean
    forwarders') at the headline step (`cpu.server_cpu_percent` over the measured window ÷ the
    step's publish rate) and over the whole loadgen run (process CPU seconds ÷ events accepted in
    all steps, connecting included); Redis's publish command `cmd` (`evalsha` with history on: the
    PUBLISH inside the script is counted on its own too, so it is not the figure; `publish`
    otherwise) from `INFO commandstats`: µs per call, µs per user copy = its µs ÷ events
    accepted, as each event goes to one user, and users per call; and the Redis process's CPU
    over the run ÷ events accepted."""
    parts = rep.get("steps") or [rep]
    events = sum(max(0, (s.get("published") or 0) - (s.get("publish_errors") or 0)) for s in parts)
    out: dict = {k: None for k in PUBLISH_COST_KEYS}
    out["events_total"] = events
    cpu = (rep.get("cpu") or {}).get("server_cpu_percent")
    if cpu and rep.get("publish_rate"):
        out["gw_usec_per_event"] = round(cpu * 1e4 / rep["publish_rate"], 2)
    if events and rep.get("gateway_cpu_seconds") is not None:
        out["gw_usec_per_event_run"] = round(rep["gateway_cpu_seconds"] * 1e6 / events, 2)
    if events and rep.get("redis_cpu_seconds") is not None:
        out["redis_cpu_usec_per_event"] = round(rep["redis_cpu_seconds"] * 1e6 / events, 2)
    calls, usec = cmdstat(rep.get("redis_commandstats", {}), cmd)
    if calls:
        out["redis_cmd"] = cmd.upper()
        out["redis_calls"] = calls
        out["redis_usec_per_call"] = round(usec / calls, 3)
        if events:
            out["redis_usec_per_copy"] = round(usec / events, 3)
            out["users_per_call"] = round(events / calls, 2)
        if rep.get("redis_cpu_seconds") is not None:
            out["redis_cpu_usec_per_call"] = round(rep["redis_cpu_seconds"] * 1e6 / calls, 2)
    return out


def publish_script() -> str:
    """gleepost_event::history::PUBLISH_SCRIPT, read from the source (single source of truth)."""
    src = (ROOT / "crates/event/src/history.rs").read_text()
    m = re.search(r'pub const PUBLISH_SCRIPT: &str = r#"(.*?)"#;', src, re.S)
    if not m:
        raise RuntimeError("PUBLISH_SCRIPT not found in crates/event/src/history.rs")
    return m.group(1)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def cmd_version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    m = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": m.group(1).strip() if m else "unknown",
        "memory": f"{int(mem.group(1)) // 1024} MiB" if mem else "unknown",
        "kernel": f"{os.uname().sysname} {os.uname().release} {os.uname().machine}",
        "rustc": cmd_version(["rustc", "--version"]),
        "redis": cmd_version(["redis-server", "--version"]),
        "python": sys.version.split()[0],
        "nofile": "soft {} / hard {}".format(*resource.getrlimit(resource.RLIMIT_NOFILE)),
        "git": cmd_version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }


def fmt(v, digits=1, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float) and digits == 0:
        v = round(v)
    if isinstance(v, (int,)) or digits == 0:
        return f"{int(v):,}{unit}"
    return f"{v:,.{digits}f}{unit}"


def met(ok) -> str:
    return "**met**" if ok else "**not met**"


def write_report(suite: Suite, path: Path, started: datetime.datetime, load_start: str,
                 load_end: str, opts) -> None:
    R = suite.results
    m = machine()
    lines: list[str] = []
    w = lines.append
    w("# Benchmarks")
    w("")
    w("Generated by `make bench` (`scripts/bench.py`); do not edit by hand. Issue 6 targets, then "
      f"issue 14's; median of {opts.runs} runs per scenario, {opts.runs_max_rate} of b and b2 and "
      f"{opts.runs_api} of h, h0, hb, h2 and lf (every value in a row is the median of that value over the "
      "runs; the max-rate runs of b, b2, h, h0, hb, h2 and lf alternate round by round, those of c, c2 and c3 "
      "too). Raw JSON reports of every run are written to `.bench/<timestamp>/`.")
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("| --- | --- |")
    w(f"| date | {started.strftime('%Y-%m-%d %H:%M UTC')} ({opts.total_minutes:.1f} min) |")
    w(f"| nproc | {m['nproc']} |")
    w(f"| CPU | {m['cpu']} |")
    w(f"| memory | {m['memory']} |")
    w(f"| kernel | {m['kernel']} |")
    w(f"| rustc | {m['rustc']} |")
    w(f"| redis-server | {m['redis']} |")
    w(f"| source | `{m['git']}` |")
    w(f"| fd limit (children) | {m['nofile']} |")
    w(f"| load average (1/5/15 min) | start {load_start}, end {load_end}; per scenario: "
      + ", ".join(f"{k} {v.split()[0]}" for k, v in suite.loads.items())
      + " (the suite itself keeps both cores busy, so these include it) |")
    w("| CPU used by other processes during each scenario (% of both cores; noise indicator) | "
      + ", ".join(f"{k} {v:.1f} %" for k, v in suite.foreign.items()) + " |")
    w("")
    w("Pinning: both gateway nodes on core 0 (`taskset -c 0`), the load generator "
      "(`--threads 1`, one core) and redis-server on core 1 (`taskset -c 1`); loopback only. "
      "Every run starts a fresh `redis-server` (no persistence) and fresh gateway nodes with "
      "default settings (history on: 1,000 events / 24 h per user; pings every 30 s), "
      "`--log warn`, `--pre-drain-delay 0s --drain-window 0s`.")
    w("")
    w("## Results")
    w("")
    w("| # | issue 6 target | measured (median) | target | result | loadgen CPU (% of core 1) | gateways CPU (% of core 0) |")
    w("| --- | --- | --- | --- | --- | --- | --- |")
    if "a" in R:
        a = R["a"]
        w(f"| a | RSS per idle connection, {fmt(a['established'], 0)} connections on one node | "
          f"**{fmt(a['kib_per_conn'], 2)} KiB** ({fmt(a['rss_before'], 0)} → {fmt(a['rss_after'], 0)} KiB) | ≤ 4 KiB | "
          f"{met(a['kib_per_conn'] is not None and a['kib_per_conn'] <= TARGET_RSS_KIB)} | "
          f"{fmt(a['loadgen_cpu'])} % connecting, {fmt(a['loadgen_cpu_hold'])} % idle | "
          f"{fmt(a['server_cpu_hold'])} % idle |")
    for key, label in (("b", "history off (raw `PUBLISH`)"), ("b2", "history on (`EVALSHA` publish script)")):
        if key not in R:
            continue
        b = R[key]
        ok = (b["deliveries"] or 0) >= TARGET_DELIVERIES and (b["p99_us"] or 1e12) <= TARGET_MAXRATE_P99_MS * 1000
        target = "≥ 130,000/s, p99 ≤ 50 ms" if key == "b" else "report (same target)"
        result = met(ok) if key == "b" else (met(ok) + " (vs. the history-off target)")
        w(f"| {key} | deliveries/s per gateway core through Redis, {label}; both nodes on core 0 | "
          f"**{fmt(b['deliveries'], 0)} deliveries/s** (runs: {fmt(b['deliveries_range'][0], 0)}–"
          f"{fmt(b['deliveries_range'][1], 0)}; {fmt(b['events'], 0)} events/s), p50 {fmt(ms(b['p50_us']), 2)} ms, "
          f"p99 **{fmt(ms(b['p99_us']), 2)} ms**; {fmt(b['per_cpu'], 0)} deliveries per gateway CPU-second | "
          f"{target} | {result} | {fmt(b['loadgen_cpu'])} % (+ Redis) | "
          f"{fmt(b['server_cpu'])} % |")
    if "c" in R:
        c = R["c"]
        w(f"| c | p99 at 5,000 events/s over 2,000 connections (1,000 users × 2 nodes) | "
          f"p99 **{fmt(ms(c['p99_us']), 3)} ms** (p50 {fmt(ms(c['p50_us']), 3)}, p99.9 {fmt(ms(c['p999_us']), 3)}, "
          f"max {fmt(ms(c['max_us']), 2)} ms; {fmt(c['deliveries'], 0)} deliveries/s, lost {fmt(c['lost'], 0)}) | ≤ 1 ms | "
          f"{met(c['p99_us'] is not None and c['p99_us'] <= TARGET_FANOUT_P99_MS * 1000)} | "
          f"{fmt(c['loadgen_cpu'])} % | {fmt(c['server_cpu'])} % |")
    if "d" in R:
        d = R["d"]
        w(f"| d | connection accepts with JWT auth per second, {fmt(opts.accept_connections, 0)} connections on one node "
          f"(Redis mode: each new user is subscribed before the 101) | **{fmt(d['accepts'], 0)}/s** "
          f"(handshake p50 {fmt(ms(d['hs_p50']), 1)} ms, p99 {fmt(ms(d['hs_p99']), 1)} ms; failed {fmt(d['failed'], 0)}) | "
          f"≥ 10,000/s | {met((d['accepts'] or 0) >= TARGET_ACCEPTS)} | {fmt(d['loadgen_cpu'])} % | {fmt(d['server_cpu'])} % |")
    if "e" in R:
        e = R["e"]
        counts = {int(k): v for k, v in e["counts"].items()}
        lo, hi = min(counts), max(counts)
        med = {n: [median(run[i] for run in counts[n]) for i in range(2)] for n in counts}
        const = all(run == counts[lo][0] for n in counts for run in counts[n])
        w(f"| e | Redis connections per node (`CLIENT LIST`), {fmt(lo, 0)} vs {fmt(hi, 0)} client connections over 2 nodes | "
          f"**{fmt(lo, 0)} conns: {med[lo][0]:.0f} + {med[lo][1]:.0f}; {fmt(hi, 0)} conns: {med[hi][0]:.0f} + {med[hi][1]:.0f}** "
          f"(node 1 + node 2) | constant | {met(const)} | – | – |")
    if "f" in R:
        f = R["f"]
        w(f"| f | Redis memory per 1,000 stored history events (~200-byte events, 100 users) | "
          f"**{fmt(f['kib_per_1000'], 1)} KiB** ({fmt(f['stored'], 0)} events stored) | report | – | "
          f"{fmt(f['loadgen_cpu'])} % | – |")
        insitu_pub = R.get("b", {}).get("usec_publish")
        insitu_eval = R.get("b2", {}).get("usec_evalsha")
        if insitu_pub and insitu_eval:
            w(f"| f | Redis cost of one publish, history on vs off, in situ (scenarios b / b2: 2 subscribed "
              f"nodes, 1,000 users) | `EVALSHA` publish script **{fmt(insitu_eval, 2)} µs** vs raw `PUBLISH` "
              f"**{fmt(insitu_pub, 2)} µs** of Redis CPU per call (×{fmt(insitu_eval / insitu_pub, 1)}; "
              f"`INFO commandstats` `usec_per_call`) | report | – | – | – |")
        ratio = (f["evalsha_usec"] / f["publish_usec"]) if f["publish_usec"] and f["evalsha_usec"] else None
        w(f"| f | Redis cost of one publish, history on vs off (Redis alone on core 1, `redis-benchmark` -P 32, no subscribers) | "
          f"`EVALSHA` script **{fmt(f['evalsha_usec'], 2)} µs** vs `PUBLISH` **{fmt(f['publish_usec'], 2)} µs** of Redis CPU per call "
          f"(×{fmt(ratio, 1)}); {fmt(f['evalsha_rps'], 0)} vs {fmt(f['publish_rps'], 0)} calls/s | report | – | – | – |")
    if "g" in R:
        g = R["g"]
        w(f"| g | {g['shards']}-shard Redis Cluster (primaries only), history on, events through the publish API "
          f"(`POST /v1/publish` on node 1) to {fmt(opts.conns // 2, 0)} users × 2 nodes; max rate with p99 ≤ 50 ms | "
          f"**{fmt(g['events'], 0)} events/s = {fmt(g['deliveries'], 0)} deliveries/s** (runs: "
          f"{fmt(g['deliveries_range'][0], 0)}–{fmt(g['deliveries_range'][1], 0)}), p50 {fmt(ms(g['p50_us']), 2)} ms, "
          f"p99 **{fmt(ms(g['p99_us']), 2)} ms**; Redis CPU per event on shards "
          f"{' / '.join(str(k + 1) for k in range(g['shards']))}: "
          f"**{' / '.join(fmt(c, 2) for c in g['usec_per_event'])} µs** (`INFO cpu`; `EVALSHA` "
          f"{' / '.join(fmt(c, 2) for c in g['usec_evalsha'])} µs per call); users per shard "
          f"{' / '.join(fmt(u, 0) for u in g['users'])} (max/mean {g['users_max_mean']:.2f}) | "
          f"report (issue 10) | – | {fmt(g['loadgen_cpu'])} % (+ 3 Redis) | {fmt(g['server_cpu'])} % |")
    w("")
    w("Loadgen CPU is the load generator's own share of core 1 (it reports it from `/proc`); Redis "
      "shares that core. Gateways CPU is the sum over the node processes on core 0 (100 % = the whole core).")
    if "b" in R and R["b"].get("deliveries_range"):
        lo, hi = R["b"]["deliveries_range"]
        eff = [per_cpu(r) for r in R["b"]["runs"] if per_cpu(r)]
        if lo and hi / lo > 1.15:
            w("")
            w(f"Noise: the history-off runs spread from {lo:,.0f} to {hi:,.0f} deliveries/s (×{hi / lo:.2f}) "
              f"and the gateways' efficiency from {min(eff):,.0f} to {max(eff):,.0f} deliveries per CPU-second "
              f"with the same binary, while other processes in this VM used ≈ {suite.foreign_of('b'):.1f} % "
              "of the machine: the variation most likely comes from outside the VM (its 2 vCPUs share a host), so "
              "read medians and ranges, not single runs.")
    w("")
    issue14_section(w, suite, opts)
    detail(w, R)
    cluster_detail(w, suite, opts)
    w("")
    w("## Commands")
    w("")
    w("Exact invocations (`$PORT` = a free loopback port picked per run, `$PID` = the gateway "
      "process(es), `$SHA` = `SCRIPT LOAD` of `gleepost_event::history::PUBLISH_SCRIPT`). Environment "
      "of gateways and load generator: `GATEWAY_JWT_SECRET`, `GATEWAY_API_KEY` (random per suite), "
      "gateways also `REDIS_URL=redis://127.0.0.1:$PORT`. RLIMIT_NOFILE is raised to the hard limit "
      "for every child.")
    w("")
    w("```sh")
    w("make bench    # = python3 scripts/bench.py")
    w("cargo build --release -p gleepost-gateway -p gleepost-loadgen -p lean-forwarder")
    w("taskset -c 1 redis-server --port $PORT --bind 127.0.0.1 --save '' --appendonly no --dir .bench/… --loglevel warning")
    w("taskset -c 0 target/release/gleepost-gateway --listen 127.0.0.1:$PORT --admin-listen 127.0.0.1:$PORT "
      "--log-format json --log warn --pre-drain-delay 0s --drain-window 0s   # × 2 nodes (× 1 for a, d, f)")
    if "g" in R:
        n = opts.shards
        w(f"# g: per cluster node (× {n}, own directory each), then CLUSTER ADDSLOTSRANGE <i·16384/{n}> "
          f"<(i+1)·16384/{n}−1> and CLUSTER SET-CONFIG-EPOCH <i+1> on node i, CLUSTER MEET 127.0.0.1 $PORT from "
          f"node 0 to the others, until every node has cluster_state:ok, cluster_known_nodes:{n}, "
          f"cluster_slots_ok:16384; gateways get REDIS_CLUSTER_URLS=redis://127.0.0.1:$PORT,… (the {n} nodes) "
          "instead of REDIS_URL")
        w("taskset -c 1 redis-server --port $PORT --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "
          "nodes.conf --save '' --appendonly no --dir .bench/…/redis-sN --loglevel warning")
    if "h0" in R:
        w("# h0: the gateways also get --history-size 0")
    if "lf" in R:
        w("taskset -c 0 target/release/lean-forwarder --listen 127.0.0.1:$PORT --redis-url redis://127.0.0.1:$PORT"
          "   # lf: × 2 instead of the gateways")
    for key in ("a", "b", "b2", "h", "h0", "hb", "h2", "lf", "c", "c2", "c3", "d", "e", "f", "g"):
        for c in COMMANDS.get(key, []):
            w(f"# {key}")
            w(c)
    w("```")
    w("")
    w("Method notes:")
    w("")
    w("- a: `idle` opens the connections (one user each, distinct users, so each costs a Redis "
      "subscription too), waits 2 s, and reports (VmRSS after − VmRSS before) / connections of the "
      "fresh node.")
    w(f"- b: `max-rate` over {fmt(opts.conns, 0)} connections ({fmt(opts.conns // 2, 0)} users, one "
      "connection per user on each node), starting at the given event rate and multiplying it by "
      f"{opts.factor} every {opts.step} step (1 s unmeasured warm-up per step) until p99 > 50 ms, loss > "
      "0.1 %, a dropped connection, a publish error or the publisher falling below 95 % of the target; "
      f"a failing step is run up to {opts.retries} more time(s) (`--retries {opts.retries}`) before the search "
      "stops, so one transient stall does not end it. "
      "The headline is the last passing step; both nodes share core 0, so their total is the "
      "per-core rate. Each event is one `PUBLISH` (or one `EVALSHA`) and two deliveries.")
    w("- c: `fanout` at 5,000 events/s (10,000 deliveries/s) through raw `PUBLISH`, 2 s warm-up, "
      f"{opts.fanout_duration} measured; latency is publish (just before the pipelined write to "
      "Redis) to receive, in the same process clock.")
    if "c2" in R:
        w(f"- c2: as c, but every event through node 1's publish API (`--publish http --http-connections "
          f"{opts.http_connections_api}`, one event per `POST /v1/publish`, history on); an event's latency starts "
          "when the load generator queues it for its HTTP connection. The per-run lines add, from the same "
          "start, when its request was sent (queued → sent: waiting behind the lane's previous request) and "
          "when the API answered 200 (queued → answered), for the events of the measured window. c and c2 runs alternate.")
    if "c3" in R:
        w("- c3: as c2, with `--http2`: the same lanes as streams of HTTP/2 (h2c) connections, 100 per connection; "
          "c, c2 and c3 runs alternate.")
    if any(k in R for k in ("h", "h0", "hb", "h2", "lf")):
        w(f"- h, h0, hb, h2, lf: `max-rate` as in b (same connections, factor, step, retries). h: events through node "
          f"1's publish API (`--publish http --http-connections {opts.http_connections_api}`, one event per "
          f"request, a user always on the same connection so per-user order holds), history on, from "
          f"{fmt(opts.start_rate_api, 0)} events/s; h0: the same with the gateways started with "
          f"`--history-size 0`, from {fmt(opts.start_rate_api_off, 0)}; hb: `POST /v1/publish/batch` "
          f"(`--publish http-batch --batch-size {opts.batch_size} --http-connections {opts.http_connections_batch}`: "
          "each request carries what is queued for its connection when it is sent, up to the batch size, one "
          f"item per event), history on, from {fmt(opts.start_rate_batch, 0)}; h2: as h with `--http2` (the "
          "same lanes, each one request at a time, as streams of HTTP/2 connections, 100 per connection), from "
          f"{fmt(opts.start_rate_api, 0)}; lf: two lean forwarder processes "
          "(crates/lean-forwarder: WebSocket + one Redis subscription per user, nothing else; a benchmark "
          f"baseline, never a product) instead of the gateways on core 0, raw `PUBLISH c:<uid>`, from "
          f"{fmt(opts.start_rate_lean, 0)}. For the HTTP paths an event's latency starts when the load "
          "generator queues it, so a saturated publish API fails the p99 bound or the publish-rate check. "
          "Gateway CPU per event: the gateways' CPU (`/proc/<pid>/stat`) ÷ events published; Redis per call "
          "and per user copy from `INFO commandstats` (reset before the run) of the publish command: `EVALSHA` "
          "with history on (the `PUBLISH` inside the script is counted on its own too), `PUBLISH` with history "
          "off; the publish script takes up to 64 users per call, so both are given.")
    w("- d: `connect-rate` with at most 256 handshakes in flight (TCP connect + upgrade with "
      "`?access_token=<HS256 JWT>`), distinct users.")
    w("- e: an `idle` run holds the connections while the script reads `CLIENT LIST` and maps each "
      "client's address to its process with `ss -tnp`.")
    w("- f memory: fresh Redis, `INFO memory` `used_memory` before and after publishing "
      f"{fmt(opts.history_events, 0)} events (`--publish redis-history`, 200-byte events) to 100 users "
      "(≈ 1,000 each, the default history bound), divided by the `XLEN` total. Cost: `redis-benchmark` "
      "with 4 clients × 32 pipelined commands, keys and channels over 1,000 users (`-r 1000`); "
      "`usec_per_call` from `INFO commandstats` is Redis's own CPU time per command (event loop, "
      "excluding I/O), the calls/s are bounded by the single Redis thread.")
    if "g" in R:
        w(f"- g: `max-rate` as in b, over {fmt(opts.conns, 0)} connections ({fmt(opts.conns // 2, 0)} users) on "
          f"the 2 nodes of a fresh {opts.shards}-primary cluster, events through node 1's publish API with "
          f"`--http-connections {opts.http_connections}` (a user always on the same connection: per-user order "
          "holds), starting at "
          f"{fmt(opts.start_rate_cluster, 0)} events/s; an event's latency starts when the load generator queues "
          "it for its HTTP connection, so a saturated publish path fails the p99 bound. The load generator "
          "(its HTTP client costs ≈ 20 µs per event) shares core 1 with all the shards, and the gateways also "
          "run the publish API on core 0: the max rate measures this 2-core box, the per-shard Redis CPU per "
          "event is the figure for sizing shards. That figure is a "
          "node's `INFO cpu` delta divided by its `EVALSHA` calls over the 0.5 s samples in which it ran at "
          "≥ half its highest sampled rate (so connecting, idle time and the low-rate steps, where every event "
          "pays a whole wake-up of Redis, are left out; the node's cluster bus, the gateways' probes and its "
          "pub/sub writes to the gateways are in); the ratios over every sample ≥ 100 events/s and over the "
          "whole run are given too. "
          f"Run it alone with `python3 scripts/bench.py --only g` (add `--runs 1` for one run).")
    path.write_text("\n".join(lines) + "\n")


def cluster_detail(w, suite, opts) -> None:
    """Scenario g's section: per run, per shard, the steps; self-contained (it names its own
    date, source and load), so that it can stand next to older results of the other scenarios."""
    g = suite.results.get("g")
    if not g:
        return
    w(f"### g: {g['shards']}-shard Redis Cluster, history on, publish API")
    w("")
    w(f"Run {g['started']} (source `{g['git']}`, {g['seconds'] / 60:.1f} min, load average at its start "
      f"{suite.loads.get('g', '?')}, other processes ≈ {suite.foreign_of('g'):.1f} % of the machine; "
      f"median of {len(g['runs'])} run(s)). {g['shards']} primaries (no replicas) of "
      "`redis-server --cluster-enabled yes` and the load generator on core 1, 2 gateway nodes with "
      "`REDIS_CLUSTER_URLS` on core 0; events go through node 1's publish API (`--publish http`, one "
      "event per `POST /v1/publish`): the node runs the publish script on the user's slot owner "
      "(`EVALSHA`: `XADD` to the history, `SPUBLISH` to `gp:user:{<id>}`), the owner sends it to the "
      "pub/sub connection of each node that has the user (2 here).")
    w("")
    w("| run | events/s | deliveries/s | p50 ms | p99 ms | loadgen % | gateways % | stopped because | "
      "at the failing step: gateways / loadgen / Redis (all shards) ≈ % |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, r in enumerate(g["runs"]):
        lat = r.get("latency_us") or {}
        steps = r.get("steps", [])
        failing = steps[-1] if steps and not steps[-1]["pass"] else None
        per_event = weighted_usec_per_event(r)
        if failing:
            redis_pct = failing["publish_rate"] * per_event / 1e4 if per_event else None
            at_fail = (f"{fmt(failing['cpu'].get('server_cpu_percent'))} / "
                       f"{fmt(failing['cpu']['loadgen_cpu_percent'])} / {fmt(redis_pct)}")
        else:
            at_fail = "–"
        w(f"| {i} | {fmt(r.get('publish_rate'), 0)} | {fmt(r.get('delivered_per_sec'), 0)} | "
          f"{fmt(ms(lat.get('p50')), 2)} | {fmt(ms(lat.get('p99')), 2)} | {fmt(r.get('loadgen_cpu_percent'))} | "
          f"{fmt((r.get('cpu') or {}).get('server_cpu_percent'))} | {r.get('stop_reason')} | {at_fail} |")
    w("")
    for i, r in enumerate(g["runs"]):
        steps = r.get("steps", [])
        if not steps or steps[-1]["pass"]:
            continue
        failing = steps[-1]
        gw = failing["cpu"].get("server_cpu_percent") or 0
        redis_pct = failing["publish_rate"] * (weighted_usec_per_event(r) or 0) / 1e4
        client = failing["cpu"]["loadgen_cpu_percent"] + redis_pct
        busiest = max(s["peak_cpu_percent"] for s in r["shards"])
        where = []
        if gw >= 95:
            where.append(f"core 0 (gateways {gw:.0f} %)")
        if client >= 90:
            where.append(f"core 1 (load generator + Redis ≈ {client:.0f} %)")
        w(f"- run {i}, final failing step: "
          + ("saturated " + " and ".join(where) if where else
             f"no core at ≥ 90–95 % by our processes (gateways {gw:.0f} %, load generator + Redis ≈ "
             f"{client:.0f} %; other processes used ≈ {suite.foreign_of('g'):.0f} % of the machine)")
          + f"; busiest shard's busiest 0.5 s: {busiest:.0f} % of a core.")
    w("")
    w("Per shard (`INFO commandstats` reset before the run; commands that the script runs are counted "
      "on their own too, so the `SPUBLISH` time is part of the `EVALSHA` time; a command's `usec` is the "
      "wall time of its execution, so it also holds the time the node was preempted on the shared core; "
      "`INFO cpu` = `used_cpu_sys` + `used_cpu_user` of the node, CPU time, I/O included, sampled every "
      "0.5 s):")
    w("")
    w("| run | shard | slots | users | EVALSHA calls | µs/EVALSHA | EVALSHA_RO calls | SPUBLISH calls | µs/SPUBLISH | "
      "Redis CPU µs per event near the max rate (INFO cpu; highest 0.5 s rate) | same, all intervals ≥ 100 events/s | "
      "same, whole run | CPU avg % | busiest 0.5 s % | idle % before the run |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, r in enumerate(g["runs"]):
        for k, s in enumerate(r["shards"]):
            w(f"| {i} | {k + 1} | {s['slots'][0]}–{s['slots'][1]} | {fmt(s['users'], 0)} | "
              f"{fmt(s['evalsha_calls'], 0)} | {fmt(s['usec_per_evalsha'], 2)} | {fmt(s['evalsha_ro_calls'], 0)} | "
              f"{fmt(s['spublish_calls'], 0)} | {fmt(s['usec_per_spublish'], 2)} | **{fmt(s['usec_per_event'], 2)}** "
              f"({fmt(s['top_rate'], 0)}/s) | {fmt(s['usec_per_event_busy'], 2)} | {fmt(s['usec_per_event_run'], 2)} | {fmt(s['cpu_percent_avg'])} | {fmt(s['peak_cpu_percent'])} | "
              f"{fmt(s['idle_cpu_percent'])} |")
    w("")
    costs = [c for c in g["usec_per_event"] if c]
    if costs:
        worst = max(costs)
        w(f"Spread: users per shard {' / '.join(fmt(u, 0) for u in g['users'])} (max/mean "
          f"{g['users_max_mean']:.3f}, CRC16 of the user id, the hash tag of `gp:hist:{{<id>}}`, checked "
          f"against `CLUSTER KEYSLOT`); `EVALSHA` calls per shard max/mean {fmt(g['calls_max_mean'], 3)}. "
          f"Redis CPU per event (median over runs) {' / '.join(fmt(c, 2) for c in g['usec_per_event'])} µs "
          f"on shards {' / '.join(str(k + 1) for k in range(g['shards']))}: at that cost one shard's core is "
          f"busy 100 % at ≈ {fmt(1e6 / worst, 0)} events/s (its users' share), so {g['shards']} shards "
          f"≈ {fmt(g['shards'] * 1e6 / worst / g['calls_max_mean'], 0)} events/s before the busiest one "
          "saturates (with 2 subscribed nodes per user; each more node with the user costs one more "
          "pub/sub write).")
        pairs = sorted((s["top_rate"], s["usec_per_event"]) for r in g["runs"] for s in r["shards"]
                       if s["usec_per_event"])
        if len(pairs) > 1:
            w("")
            w("Cost against the shard's rate (every shard of every run, highest 0.5 s rate → µs per event near "
              "it): " + ", ".join(f"{fmt(t, 0)}/s → {c:.1f}" for t, c in pairs) + ". A Redis wake-up serves "
              "more events as the rate rises, and here 3 shards and the load generator take turns on one "
              "core (cold caches after every switch), so these figures are likely above what a shard with a "
              "core of its own pays at higher rates (compare the standalone `EVALSHA` costs of b2 and f).")
        w("")
    steps_table(w, g["runs"])


def ratio(a, b):
    return a / b if a and b else None


def paired_ratios(R, num: str, den: str, value=lambda run: run.get("publish_rate")) -> list[float | None]:
    """Per-round ratios of `value` (of a run's report) between two interleaved scenarios (run i
    of each ran in round i)."""
    if num not in R or den not in R:
        return []
    return [ratio(value(a), value(b)) for a, b in zip(R[num]["runs"], R[den]["runs"])]


def delivery_p99(run: dict):
    """A run's delivery latency p99 (µs), for paired_ratios."""
    return run["latency_us"]["p99"]


def p99_verdict(median_ratio, rounds) -> str:
    """Met or not by the median ratio, and in how many rounds (a noisy round moves c alone)."""
    if not median_ratio:
        return "– (not measured)"
    held = sum(1 for r in rounds if r is not None and r <= TARGET_API_P99_VS_RAW)
    return f"{met(median_ratio <= TARGET_API_P99_VS_RAW)} (held in {held} of {len(rounds)} rounds)"


def fmt_ratios(values) -> str:
    return ", ".join(fmt(v, 2) for v in values) if values else "–"


def issue14_section(w, suite: Suite, opts) -> None:
    """Issue 14's targets with their measured values, and the publish paths side by side."""
    R = suite.results
    if not any(k in R for k in ("h", "h0", "hb", "h2", "lf", "c2")):
        return
    w("## Issue 14: the publish path")
    w("")
    w(f"Max-rate scenarios h, h0, hb, h2 and lf ({opts.runs_api} runs each) run interleaved round by round "
      "(one run of each per round) and, when scenario b runs in the same invocation, in the same rounds "
      "as b and b2, so that the ratios compare the same sitting; c, c2 and c3 alternate the same way. Ratios are "
      "of the medians; the per-round ratios are given to show the spread. Events/s is the publish rate of "
      "the last passing step (each event goes to one user, who has a connection on each node: deliveries "
      "= 2 × events).")
    w("")
    h, lf, b, c, c2, a, hb = (R.get(k) for k in ("h", "lf", "b", "c", "c2", "a", "hb"))
    h2, c3 = R.get("h2"), R.get("c3")
    w("| target | measured (median) | target | result |")
    w("| --- | --- | --- | --- |")
    vs_lean = ratio(h and h["events"], lf and lf["events"])
    w(f"| API path with history on (h), max rate vs the lean forwarder (lf), same sitting | "
      f"{fmt(h and h['events'], 0)} vs {fmt(lf and lf['events'], 0)} events/s = **×{fmt(vs_lean, 2)}** "
      f"(per round: {fmt_ratios(paired_ratios(R, 'h', 'lf'))}) | ≥ ×{TARGET_API_VS_LEAN} | "
      f"{met(vs_lean >= TARGET_API_VS_LEAN) if vs_lean else '– (not measured)'} |")
    vs_raw = ratio(h and h["events"], b and b["events"])
    w(f"| API path with history on (h) vs the raw `PUBLISH` path of the same binary (b) | "
      f"{fmt(h and h['events'], 0)} vs {fmt(b and b['events'], 0)} events/s = **×{fmt(vs_raw, 2)}** "
      f"(per round: {fmt_ratios(paired_ratios(R, 'h', 'b'))}) | ≥ ×{TARGET_API_VS_RAW} | "
      f"{met(vs_raw >= TARGET_API_VS_RAW) if vs_raw else '– (not measured)'} |")
    p99 = ratio(c2 and c2["p99_us"], c and c["p99_us"])
    rounds = paired_ratios(R, "c2", "c", delivery_p99)
    w(f"| p99 at 5,000 events/s over 2,000 connections: publish API with history on (c2) vs raw `PUBLISH` (c) | "
      f"{fmt(ms(c2 and c2['p99_us']), 3)} vs {fmt(ms(c and c['p99_us']), 3)} ms = **×{fmt(p99, 2)}** "
      f"(per round: {fmt_ratios(rounds)}) | ≤ ×{TARGET_API_P99_VS_RAW} | {p99_verdict(p99, rounds)} |")
    if h2:
        v_lean = ratio(h2["events"], lf and lf["events"])
        v_raw = ratio(h2["events"], b and b["events"])
        w(f"| The same API path over HTTP/2 (h2: h2c, 100 lanes per connection) vs lf / vs b | "
          f"{fmt(h2['events'], 0)} events/s = **×{fmt(v_lean, 2)}** lf (per round: "
          f"{fmt_ratios(paired_ratios(R, 'h2', 'lf'))}), **×{fmt(v_raw, 2)}** b (per round: "
          f"{fmt_ratios(paired_ratios(R, 'h2', 'b'))}) | ≥ ×{TARGET_API_VS_LEAN} / ≥ ×{TARGET_API_VS_RAW} | "
          f"{met(v_lean >= TARGET_API_VS_LEAN) if v_lean else '–'} / {met(v_raw >= TARGET_API_VS_RAW) if v_raw else '–'} |")
    if c3:
        p99_h2 = ratio(c3["p99_us"], c and c["p99_us"])
        rounds = paired_ratios(R, "c3", "c", delivery_p99)
        w(f"| p99 at 5,000 events/s: publish API over HTTP/2 (c3) vs raw `PUBLISH` (c) | "
          f"{fmt(ms(c3['p99_us']), 3)} vs {fmt(ms(c and c['p99_us']), 3)} ms = **×{fmt(p99_h2, 2)}** "
          f"(per round: {fmt_ratios(rounds)}) | ≤ ×{TARGET_API_P99_VS_RAW} | {p99_verdict(p99_h2, rounds)} |")
    if h:
        call, copy = h.get("redis_usec_per_call"), h.get("redis_usec_per_copy")
        w(f"| Redis CPU per publish-script call in situ (h: `{h.get('redis_cmd') or 'EVALSHA'}`, `INFO commandstats` "
          f"usec ÷ calls over the run) | **{fmt(call, 2)} µs per call** ({fmt(h.get('users_per_call'), 1)} users per "
          f"call), **{fmt(copy, 2)} µs per user copy**; the Redis process's whole CPU (`/proc`) ÷ calls "
          f"{fmt(h.get('redis_cpu_usec_per_call'), 2)} µs, ÷ events {fmt(h.get('redis_cpu_usec_per_event'), 2)} µs | "
          f"≤ {TARGET_REDIS_USEC_PER_CALL:g} µs | per call: "
          f"{met(call <= TARGET_REDIS_USEC_PER_CALL) if call else '–'}; per user copy: "
          f"{met(copy <= TARGET_REDIS_USEC_PER_CALL) if copy else '–'} |")
    if a:
        kib = a["kib_per_conn"]
        w(f"| RSS per idle connection, {fmt(a['established'], 0)} connections on one node (a) | **{fmt(kib, 2)} KiB** | "
          f"≤ {TARGET_IDLE_KIB:g} KiB | {met(kib is not None and kib <= TARGET_IDLE_KIB)} |")
    if hb:
        w(f"| Batch publish API (hb: `--batch-size {opts.batch_size}`, `--http-connections "
          f"{opts.http_connections_batch}`), history on | **{fmt(hb['events'], 0)} events/s** "
          f"({fmt(hb['deliveries'], 0)} deliveries/s, p99 {fmt(ms(hb['p99_us']), 2)} ms; "
          f"{fmt(hb.get('events_per_request'), 1)} events per request at that step) | report | – |")
    w("")
    w("Publish paths side by side (max-rate, 2,000 connections over 1,000 users, both nodes on core 0; "
      "CPU per event = process CPU ÷ events published: at the headline step and over the whole loadgen run; "
      "Redis: its publish command's `INFO commandstats` usec ÷ calls, users (events) per call, usec ÷ events; "
      "Redis process CPU ÷ events over the run, pub/sub writes and the gateways' probes included):")
    w("")
    w("| # | path | events/s (runs) | deliveries/s | p50 / p99 ms | server CPU µs per event (max / run) | "
      "Redis command: µs/call, users/call, µs per user copy | Redis process µs per event | loadgen % | server % |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, label in MAX_RATE_LABELS.items():
        x = R.get(key)
        if not x or "runs" not in x:
            continue
        lo, hi = x.get("events_range") or (None, None)
        spread = f" ({fmt(lo, 0)}–{fmt(hi, 0)})" if lo and hi else ""
        w(f"| {key} | {label} | **{fmt(x['events'], 0)}**{spread} | {fmt(x['deliveries'], 0)} | "
          f"{fmt(ms(x['p50_us']), 2)} / {fmt(ms(x['p99_us']), 2)} | {fmt(x.get('gw_usec_per_event'), 1)} / "
          f"{fmt(x.get('gw_usec_per_event_run'), 1)} | {x.get('redis_cmd') or '–'}: {fmt(x.get('redis_usec_per_call'), 2)}, "
          f"{fmt(x.get('users_per_call'), 1)}, {fmt(x.get('redis_usec_per_copy'), 2)} | "
          f"{fmt(x.get('redis_cpu_usec_per_event'), 2)} | {fmt(x['loadgen_cpu'])} | {fmt(x['server_cpu'])} |")
    for key, label in (("c", "fan-out at 5,000 events/s, raw `PUBLISH`"),
                       ("c2", "fan-out at 5,000 events/s, publish API, history on"),
                       ("c3", "fan-out at 5,000 events/s, publish API over HTTP/2, history on")):
        x = R.get(key)
        if not x or "runs" not in x:
            continue
        w(f"| {key} | {label} | 5,000 (fixed) | {fmt(x['deliveries'], 0)} | {fmt(ms(x['p50_us']), 3)} / "
          f"{fmt(ms(x['p99_us']), 3)} | {fmt(x.get('gw_usec_per_event'), 1)} / {fmt(x.get('gw_usec_per_event_run'), 1)} | "
          f"{x.get('redis_cmd') or '–'}: {fmt(x.get('redis_usec_per_call'), 2)}, {fmt(x.get('users_per_call'), 1)}, "
          f"{fmt(x.get('redis_usec_per_copy'), 2)} | {fmt(x.get('redis_cpu_usec_per_event'), 2)} | "
          f"{fmt(x['loadgen_cpu'])} | {fmt(x['server_cpu'])} |")
    w("")
    w("`INFO commandstats` usec is the wall time of each command, so on core 1, shared with the load "
      "generator, it also counts the times Redis was preempted mid-script; the Redis process's CPU time "
      "(`/proc/<pid>/stat`, everything it did: reading requests, the scripts, pub/sub writes to the "
      "gateways, the gateways' probes) ÷ calls or ÷ events bounds the script's own CPU from above without "
      "that error. When the commandstats figure is the larger one, preemption inflated it.")
    w("")
    w("Where a path's final failing step saturated core 1 (load generator + Redis, see the per-run tables "
      "below) rather than core 0, its max rate is the bench's ceiling, not the server's: the load "
      "generator's HTTP client costs more per event than its Redis publisher (one request per event "
      "in `--publish http`). The lean forwarder (`crates/lean-forwarder`, a benchmark baseline only: "
      "JWT `sub` not verified) is WebSocket plus one Redis `SUBSCRIBE` per user per process and nothing "
      "else, driven by raw `PUBLISH c:<uid>` like b.")
    w("")


def weighted_usec_per_event(rep: dict) -> float | None:
    """Redis CPU per event over the whole cluster: each event runs on one shard, so the shards'
    costs weighted by their calls."""
    pairs = [(s["usec_per_event"], s["near_calls"]) for s in rep["shards"] if s["usec_per_event"]]
    calls = sum(n for _, n in pairs)
    return sum(c * n for c, n in pairs) / calls if calls else None


def steps_table(w, runs: list[dict], server: str = "gateways") -> None:
    """The max-rate steps of the middle run (with events per HTTP request when it published
    through the API)."""
    last = runs[len(runs) // 2]
    steps = last.get("steps", [])
    per_request = any(s.get("events_per_request") for s in steps)
    w(f"Steps of run {len(runs) // 2}:")
    w("")
    w("| target events/s | published/s | deliveries/s | loss % | p50 ms | p99 ms | p99.9 ms | loadgen % | "
      f"{server} % | {'events per HTTP request | ' if per_request else ''}result |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | " + ("--- | " if per_request else "") + "--- |")
    for s in steps:
        lat = s["latency_us"]
        w(f"| {fmt(s['rate_target'], 0)} | {fmt(s['publish_rate'], 0)} | {fmt(s['delivered_per_sec'], 0)} | "
          f"{s['loss_pct']} | {fmt(ms(lat['p50']), 2)} | {fmt(ms(lat['p99']), 2)} | {fmt(ms(lat['p999']), 2)} | "
          f"{fmt(s['cpu']['loadgen_cpu_percent'])} | {fmt(s['cpu'].get('server_cpu_percent'))} | "
          + (f"{fmt(s.get('events_per_request'), 2)} | " if per_request else "")
          + f"{'pass' if s['pass'] else 'FAIL: ' + str(s['reason'])} |")
    w("")


def api_fanout_line(r: dict) -> str:
    """One run of c2 or c3 (fan-out through the publish API): latency, loss, CPU, Redis cost."""
    lat = r["latency_us"]
    return (f"p50 {lat['p50']} µs, p99 {lat['p99']} µs, p99.9 {lat['p999']} µs, max {lat['max']} µs; "
            f"{r['delivered_per_sec']} deliveries/s; lost {r['lost']}, dup {r['duplicated']}, publish errors "
            f"{r['publish_errors']}; loadgen {r['loadgen_cpu_percent']} %, gateways "
            f"{r['cpu'].get('server_cpu_percent')} % ({fmt(r.get('gw_usec_per_event'), 1)} µs/event); Redis "
            f"{r.get('redis_cmd')} {fmt(r.get('redis_usec_per_call'), 2)} µs/call, "
            f"{fmt(r.get('users_per_call'), 2)} users/call, {fmt(r.get('redis_usec_per_copy'), 2)} µs/user copy"
            + "".join(f"; {label} p50 {t['p50']} µs, p99 {t['p99']} µs"
                      for label, t in (("queued → sent", r.get("http_wait_us")),
                                       ("queued → answered", r.get("http_answer_us"))) if t))


def per_cpu(rep):
    """Deliveries per second of gateway CPU at the headline step."""
    cpu = (rep.get("cpu") or {}).get("server_cpu_percent")
    d = rep.get("delivered_per_sec")
    return d * 100 / cpu if cpu and d else None


def ms(us):
    return None if us is None else us / 1000.0


MAX_RATE_LABELS = {
    "b": "history off (raw `PUBLISH`)",
    "b2": "history on (`EVALSHA` publish script straight to Redis)",
    "h": "publish API (`POST /v1/publish`, one event per request), history on",
    "h0": "publish API, history off (`--history-size 0`)",
    "hb": "batch publish API (`POST /v1/publish/batch`), history on",
    "h2": "publish API over HTTP/2 (`--http2`: the lanes are streams of h2c connections, 100 per connection), history on",
    "lf": "lean forwarder baseline (raw `PUBLISH`; not the gateway)",
}


def detail(w, R) -> None:
    for key, label in MAX_RATE_LABELS.items():
        if key not in R:
            continue
        b = R[key]
        server = "lean forwarders" if key == "lf" else "gateways"
        w(f"### {key}: max-rate steps, {label}")
        w("")
        w(f"Per run: the last passing step, why stepping stopped, and the CPU at the final failing step: "
          f"{server} (core 0), load generator and Redis (core 1; Redis ≈ published/s × µs per user copy, "
          "i.e. the `usec` of its publish command from `INFO commandstats` over the run ÷ events"
          + (", publishes inside the script included" if key in ("b2", "h", "hb") else "")
          + f"). {server.capitalize()} µs/event: their CPU ÷ events published, at the headline step and over "
          "the whole loadgen run (connecting and the low steps included). The gateways' 1 s readiness probe "
          "adds a few calls to `INFO commandstats`; the Redis CPU average covers the whole run, idle gaps "
          "included.")
        w("")
        w(f"| run | deliveries/s | events/s | p50 ms | p99 ms | loadgen % | {server} % | deliveries per CPU-s | "
          f"{server} µs/event (max / run) | Redis command: µs/call, users/call, µs/user copy | "
          "stopped because | at the failing step: "
          f"{server} / loadgen / Redis ≈ % | Redis CPU avg % |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        notes = []
        for i, r in enumerate(b["runs"]):
            lat = r.get("latency_us") or {}
            per_copy = r.get("redis_usec_per_copy")
            steps = r.get("steps", [])
            failing = steps[-1] if steps and not steps[-1]["pass"] else None
            redis_pct = None
            if failing:
                redis_pct = failing["publish_rate"] * per_copy / 1e4 if per_copy else None
                at_fail = (f"{fmt(failing['cpu'].get('server_cpu_percent'))} / "
                           f"{fmt(failing['cpu']['loadgen_cpu_percent'])} / {fmt(redis_pct)}")
            else:
                at_fail = "–"
            w(f"| {i} | {fmt(r.get('delivered_per_sec'), 0)} | {fmt(r.get('publish_rate'), 0)} | "
              f"{fmt(ms(lat.get('p50')), 2)} | {fmt(ms(lat.get('p99')), 2)} | {fmt(r.get('loadgen_cpu_percent'))} | "
              f"{fmt((r.get('cpu') or {}).get('server_cpu_percent'))} | {fmt(per_cpu(r), 0)} | "
              f"{fmt(r.get('gw_usec_per_event'), 1)} / {fmt(r.get('gw_usec_per_event_run'), 1)} | "
              f"{r.get('redis_cmd') or '–'}: {fmt(r.get('redis_usec_per_call'), 2)}, {fmt(r.get('users_per_call'), 1)}, "
              f"{fmt(per_copy, 2)} | {r.get('stop_reason')} | {at_fail} | {fmt(r.get('redis_cpu_percent_avg'))} |")
            if failing:
                notes.append((i, failing, redis_pct))
        w("")
        for i, failing, redis_pct in notes:
            gw = failing["cpu"].get("server_cpu_percent") or 0
            client = failing["cpu"]["loadgen_cpu_percent"] + (redis_pct or 0)
            where = []
            if gw >= 95:
                where.append(f"core 0 ({server} {gw:.0f} %)")
            if client >= 90:
                where.append(f"core 1 (load generator + Redis ≈ {client:.0f} %)")
            w(f"- run {i}, final failing step: "
              + ("saturated " + " and ".join(where) if where else
                 f"no core at ≥ 90–95 % ({server} {gw:.0f} %, load generator + Redis ≈ {client:.0f} %)")
              + ".")
        w("")
        steps_table(w, b["runs"], server)
    simple = [
        ("a", "a: idle RSS", lambda r: f"{r['established']} established, RSS {r['server_rss_kib_before']} → "
         f"{r['server_rss_kib_after']} KiB = {r['server_rss_kib_per_conn']} KiB/conn"),
        ("c", "c: fan-out at 5,000 events/s", lambda r: f"p50 {r['latency_us']['p50']} µs, p99 {r['latency_us']['p99']} µs, "
         f"p99.9 {r['latency_us']['p999']} µs, max {r['latency_us']['max']} µs; {r['delivered_per_sec']} deliveries/s; "
         f"lost {r['lost']}, dup {r['duplicated']}; loadgen {r['loadgen_cpu_percent']} %, gateways "
         f"{r['cpu'].get('server_cpu_percent')} %"),
        ("c2", "c2: fan-out at 5,000 events/s through the publish API (history on)", api_fanout_line),
        ("c3", "c3: fan-out at 5,000 events/s through the publish API over HTTP/2 (history on)",
         api_fanout_line),
        ("d", "d: connect rate", lambda r: f"{r['accepts_per_sec']} accepts/s, {r['established']} established, "
         f"{r['failed']} failed, handshake p50 {r['handshake_us']['p50']} µs p99 {r['handshake_us']['p99']} µs; "
         f"loadgen {r['connect_cpu']['loadgen_cpu_percent']} %, gateway {r['connect_cpu'].get('server_cpu_percent')} %"),
    ]
    for key, title, line in simple:
        if key not in R:
            continue
        w(f"### {title}, every run")
        w("")
        for i, r in enumerate(R[key]["runs"]):
            w(f"- run {i}: {line(r)}")
        w("")
    if "e" in R:
        w("### e: Redis connections per node, every run")
        w("")
        for n, runs in R["e"]["counts"].items():
            w(f"- {n} client connections: " + "; ".join(f"node 1 {a}, node 2 {b}" for a, b in runs))
        w("")
    if "f" in R:
        f = R["f"]
        w("### f: Redis history memory and publish cost, every run")
        w("")
        for i, r in enumerate(f["runs"]):
            w(f"- memory run {i}: used_memory {r['before']:,} → {r['after']:,} bytes for {r['stored']:,} "
              f"stored events = {r['kib_per_1000']:.1f} KiB per 1,000")
        for i, row in enumerate(f["bench"]):
            w(f"- cost run {i}: " + "; ".join(
                f"{k} {v['rps']:,.0f} calls/s, {v['usec_per_call']} µs/call" for k, v in row.items()))
        w("")


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario (median reported)")
    ap.add_argument("--runs-max-rate", type=int, default=5,
                    help="runs of b and b2 (interleaved; the noisiest scenarios)")
    ap.add_argument("--runs-api", type=int, default=3,
                    help="runs of h, h0, hb, h2 and lf (interleaved with each other and with b), and of c2 "
                         "(0: none of them)")
    ap.add_argument("--only", default="",
                    help="comma-separated scenarios: a,b (b and b2),c (c, c2, c3),d,e,f,g,h (h, h0, hb, h2, lf)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="report path")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binaries")
    ap.add_argument("--idle-connections", type=int, default=10_000)
    ap.add_argument("--accept-connections", type=int, default=10_000)
    ap.add_argument("--conns", type=int, default=2_000, help="max-rate connections (2 per user)")
    ap.add_argument("--start-rate", type=float, default=30_000, help="max-rate first step, events/s (history off)")
    ap.add_argument("--start-rate-history", type=float, default=20_000, help="same, history on")
    ap.add_argument("--shards", type=int, default=3, help="g: cluster primaries")
    ap.add_argument("--start-rate-cluster", type=float, default=2_000,
                    help="g: max-rate first step, events/s (publish API)")
    ap.add_argument("--http-connections", type=int, default=64,
                    help="g: the load generator's keep-alive connections to the publish API")
    ap.add_argument("--start-rate-api", type=float, default=5_000,
                    help="h: max-rate first step, events/s (publish API, history on)")
    ap.add_argument("--start-rate-api-off", type=float, default=5_000, help="h0: same, history off")
    ap.add_argument("--start-rate-batch", type=float, default=10_000, help="hb: same, batch API")
    ap.add_argument("--start-rate-lean", type=float, default=30_000, help="lf: same, lean forwarder")
    ap.add_argument("--http-connections-api", type=int, default=256,
                    help="h, h0, c2: the load generator's keep-alive connections to the publish API")
    ap.add_argument("--http-connections-batch", type=int, default=8,
                    help="hb: the load generator's keep-alive connections to the batch API")
    ap.add_argument("--batch-size", type=int, default=100, help="hb: most events per batch request")
    ap.add_argument("--factor", type=float, default=1.1)
    ap.add_argument("--step", default="3s")
    ap.add_argument("--max-steps", type=int, default=32)
    ap.add_argument("--retries", type=int, default=1, help="max-rate: attempts again a failing step")
    ap.add_argument("--fanout-duration", default="8s")
    ap.add_argument("--history-events", type=int, default=100_000)
    ap.add_argument("--bench-requests", type=int, default=300_000)
    ap.add_argument("--wait-quiet", type=float, default=0,
                    help="wait up to this many seconds for the 1-minute load average to drop below 0.5")
    opts = ap.parse_args()
    only = {s.strip() for s in opts.only.split(",") if s.strip()}

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for tool in ("taskset", "redis-server", "redis-cli", "redis-benchmark", "ss"):
        if not any((Path(p) / tool).exists() for p in os.environ.get("PATH", "").split(":")):
            print(f"error: {tool} not found on PATH", file=sys.stderr)
            return 2
    if os.cpu_count() and os.cpu_count() < 2:
        print("error: needs at least 2 cores (gateways on core 0, client + Redis on core 1)", file=sys.stderr)
        return 2

    suite = Suite(opts)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    try:
        if opts.wait_quiet > 0:
            deadline = time.monotonic() + opts.wait_quiet
            while os.getloadavg()[0] > 0.5 and time.monotonic() < deadline:
                suite.log(f"machine busy (load average {loadavg()}); waiting")
                time.sleep(30)
        if not opts.no_build:
            suite.log("cargo build --release -p gleepost-gateway -p gleepost-loadgen -p lean-forwarder")
            subprocess.run(["cargo", "build", "--release", "-p", "gleepost-gateway", "-p", "gleepost-loadgen",
                            "-p", "lean-forwarder"], cwd=ROOT, check=True, timeout=1800)
        needed = [GATEWAY_BIN, LOADGEN_BIN] + ([LEAN_BIN] if not only or "h" in only else [])
        for b in needed:
            if not b.exists():
                raise RuntimeError(f"{b} missing (build failed?)")
        suite.out.mkdir(parents=True, exist_ok=True)
        load_start = loadavg()
        suite.log(f"results in {suite.out}; load average {load_start}")
        if os.getloadavg()[0] > 1.0:
            suite.log("warning: the machine is busy; numbers will be noisy (the report records the load)")
        suite.run(only)
        load_end = loadavg()
        opts.total_minutes = (time.monotonic() - t0) / 60
        out = Path(opts.out)
        write_report(suite, out, started, load_start, load_end, opts)
        suite.log(f"wrote {out} in {opts.total_minutes:.1f} min")
        return 0
    except Interrupted as e:
        print(f"\ninterrupted ({e}); stopping everything", file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as e:
        print(f"error: {shown(e.cmd)} failed ({e.returncode}): {e.stderr or ''}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        PROCS.stop_all()


if __name__ == "__main__":
    sys.exit(main())
