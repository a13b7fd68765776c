#!/usr/bin/env python3
"""referee's performance budget, measured as ratios against a native-cfg baseline.

Run with the repo's venv (Kamailio loads referee from it); bench/README.md has the
numbers and how to read them:

    .venv/bin/python bench/run.py                   # everything, about 6-7 minutes
    .venv/bin/python bench/run.py --only calls      # the drop-in hook's cost on calls
    .venv/bin/python bench/run.py --only refer --variants native,referee-native --no-ramp

Each variant gets its own redis-server and Kamailio (same cfg skeleton, same number of
workers, same allocator) on loopback, a SIPp UAS behind the proxy and a SIPp UAC in front:

* refer: in-dialog REFERs (To-tag, Route to the proxy, a new dialog each) relayed to a UAS
  that answers 202.  Variants: native (bench/native-refer.cfg), native-track (the same +
  the REFER's final reply recorded in Redis, as referee does), referee-native
  (config-examples/kamailio/kamailio-native.cfg, the python_exec drop-in) and
  referee-python (kamailio.cfg, cfgengine python).
  - CPU µs per REFER: user+system time of every Kamailio process (the tree under the main
    process found through /proc/<pid>/stat; the time itself from /proc/<pid>/task/*/schedstat,
    ns-exact) over fixed-rate chunks, divided by the REFERs answered.
  - max REFER/s: SIPp raises its rate each second; the best second before the first two
    bad ones in a row (failures, >1% retransmissions, mean answer slower than 50 ms).
  - Redis per REFER: read events (total_reads_processed: round trips) and commands.
* transfers: the same REFER, then the transferee's NOTIFYs (sipfrag 100, then 200 with
  the subscription terminated) through the proxy, each answered 200: CPU µs per complete
  transfer, referee-native against native-track (which also records each NOTIFY's status).
* calls: INVITE/200/ACK/BYE through kamailio-native.cfg with referee's hook (hook-on) and
  with `-A WITHOUT_REFEREE` (hook-off); CPU µs per call.

All variants of a part run side by side and are measured in interleaved chunks whose order
rotates, each after waiting for the rest of the machine to go quiet; the CPU of anything
else that ran meanwhile is reported as "other load".  Ratios per round are the robust
numbers: the box is a shared VM, and absolute µs drift by ±30% from minute to minute.
Everything runs on 127.0.0.1; every process started here is stopped here by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kemi.cli.demo.kamailio_node import Kamailio, free_udp_port  # noqa: E402
from kemi.cli.demo.redis_server import RedisServer  # noqa: E402

BENCH = REPO / "bench"
SCENARIOS = BENCH / "scenarios"
CLK_TCK = os.sysconf("SC_CLK_TCK")
REFEREE_CLI = str(Path(sys.prefix) / "bin" / "referee")


@dataclass(frozen=True)
class Variant:
    name: str
    cfg: str  # absolute path, or a file name in config-examples/kamailio
    referee: bool  # needs referee.toml and a policy DB
    defines: tuple[str, ...] = ()
    ndb_redis: bool = False  # pass the Redis address as REDIS_SERVER
    referee_ndb: bool = True  # referee's Redis through ndb_redis (REFEREE_REDIS)
    toml_extra: str = ""  # appended to referee.toml
    cluster: bool = False  # a 3-master Redis Cluster (redis+cluster:// url) instead
    # (old, new) pairs: kamailio-native.cfg with these texts replaced, run from a copy of
    # config-examples/kamailio in the variant's directory (what-if variants only)
    cfg_patch: tuple[tuple[str, str], ...] = ()
    # A source tree of another commit (--base): its kemi and its cfg run instead
    tree: str = ""


REFER_VARIANTS = {
    "native": Variant("native", str(BENCH / "native-refer.cfg"), False, ndb_redis=True),
    "native-track": Variant(
        "native-track", str(BENCH / "native-refer.cfg"), False, ("NATIVE_TRACK",), ndb_redis=True
    ),
    # native's route[TRANSFER] ported line for line to KEMI Python (bench/native_kemi.py):
    # what app_python3 costs for the baseline's own job, not referee
    "native-kemi": Variant(
        "native-kemi", str(BENCH / "native-refer.cfg"), False,
        ("NATIVE_KEMI", f'NATIVE_KEMI_SCRIPT="{BENCH / "native_kemi.py"}"'), ndb_redis=True),
    "referee-native": Variant("referee-native", "kamailio-native.cfg", True),
    "referee-python": Variant("referee-python", "kamailio.cfg", True),
    # referee-native with referee's own Python RESP client instead of ndb_redis (what
    # TLS, Sentinel and Cluster urls use).
    "referee-resp": Variant("referee-resp", "kamailio-native.cfg", True, referee_ndb=False),
    # referee-native on a 3-master Redis Cluster (referee's Python Cluster client; Redis
    # CPU and trips summed over the three nodes)
    "referee-cluster": Variant("referee-cluster", "kamailio-native.cfg", True, cluster=True),
}
# Complete transfers: the REFER, its 202, and the transferee's NOTIFYs (100 Trying, then
# 200 OK terminating the subscription), each answered 200 by the transferor.
TRANSFER_VARIANTS = {
    # native-track + each NOTIFY's sipfrag status recorded (one more HSET round trip each)
    "native-track": REFER_VARIANTS["native-track"],
    "referee-native": REFER_VARIANTS["referee-native"],
    "referee-cluster": REFER_VARIANTS["referee-cluster"],
}
CALL_VARIANTS = {
    "hook-off": Variant("hook-off", "kamailio-native.cfg", True, ("WITHOUT_REFEREE",)),
    "hook-on": Variant("hook-on", "kamailio-native.cfg", True),
    # hook-off again, in a lab of its own: what two labs of one cfg differ by (a null check
    # for hook-on / hook-off)
    "hook-off-twin": Variant("hook-off-twin", "kamailio-native.cfg", True, ("WITHOUT_REFEREE",)),
    # What-if: referee loaded (modules, Python, timers, htables) but none of its lines run
    # for a request -- what hook-on costs beyond the lines themselves
    "hook-loaded": Variant("hook-loaded", "kamailio-native.cfg", True, cfg_patch=(
        ("\troute(REFEREE_CSEQ);\n\tif (is_method(\"CANCEL\"))",
         "\tif (is_method(\"CANCEL\"))"),
        ("route[TRANSFER] {\n#!ifndef WITHOUT_REFEREE",
         "route[TRANSFER] {\n\treturn;\n#!ifndef WITHOUT_REFEREE"),
        ("route[RELAY] {\n#!ifndef WITHOUT_REFEREE", "route[RELAY] {\n#!ifdef WITHOUT_REFEREE"),
    )),
    # What-if: hook-on without the INVITE's header checks (Referred-By, X-Referee-Tie)
    "hook-nohf": Variant("hook-nohf", "kamailio-native.cfg", True, cfg_patch=(
        ('if (is_present_hf("Referred-By") || is_present_hf("X-Referee-Tie")\n\t\t\t\t|| ',
         'if ('),
    )),
    # The order timer's wake-ups at the interval it had before (10 ms; now 50 ms).
    "hook-on-order10": Variant("hook-on-order10", "kamailio-native.cfg", True,
                               ('ORDER_TIMER="name=referee_order;interval=10000u;mode=1;"',)),
    # Attended transfer checked at the edge: every INVITE dialog indexed in Redis.
    "index-on": Variant("index-on", "kamailio-native.cfg", True, ("WITH_DIALOG_INDEX",),
                        toml_extra="[kamailio]\ndialog_index = true\n"),
    # The floor of any index written synchronously from cfg: the same call flow and the
    # same two ndb_redis round trips per call, each a bare PING instead of the script.
    "index-ping": Variant(
        "index-ping", "kamailio-native.cfg", True, ("WITH_DIALOG_INDEX",),
        toml_extra="[kamailio]\ndialog_index = true\n",
        cfg_patch=(
            ('"EVALSHA %s 0 %s", "$sht(referee_ix=>sha)",\n\t\t\t\t"$sht(referee_ix=>args) '
             '$var(rf_ixe) $TV(Sn) =$ci =$ft =$tt =$fu =$tu =$Ri:$Rp =$si:$sp =$var(rf_ixs) '
             '$cs",', '"PING",'),
            ("if ($var(rf_ixw) == 1) return;", "return;"),
        )),
    # the same on a Redis Cluster: no ndb_redis there, so every write goes through Python
    "index-cluster": Variant("index-cluster", "kamailio-native.cfg", True,
                             ("WITH_DIALOG_INDEX",),
                             toml_extra="[kamailio]\ndialog_index = true\n", cluster=True),
}


# --------------------------------------------------------------------------- /proc


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime+stime seconds) of one process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()  # comm may hold spaces
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def process_tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None:
                parents.setdefault(st[0], []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, ()))
    return out


def _cpu_ns(pid: int) -> int | None:
    """On-CPU time of every thread of a process in ns (/proc/<pid>/task/*/schedstat: the
    same user+system time as /proc/<pid>/stat, without its 10 ms ticks, which alone
    would blur a 1500-call chunk by ±5%)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        ns = _cpu_ns(pid) if HAVE_SCHEDSTAT else None
        if ns is not None:
            total += ns / 1e9
            continue
        st = _proc_stat(pid)
        if st is not None:
            total += st[1]
    return total


HAVE_SCHEDSTAT = os.path.exists("/proc/self/schedstat")


# --------------------------------------------------------------------------- Redis


def redis_info(port: int) -> dict[str, str]:
    """INFO stats + commandstats as a flat dict (one round trip of our own)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n")
        buf = b""
        while b"\r\n" not in buf:
            buf += s.recv(65536)
        head, _, body = buf.partition(b"\r\n")
        n = int(head[1:])
        while len(body) < n:
            body += s.recv(65536)
    out = {}
    for line in body[:n].decode().splitlines():
        if ":" in line and not line.startswith("#"):
            k, _, v = line.partition(":")
            out[k] = v
    return out


def redis_counts(info: dict[str, str]) -> tuple[int, dict[str, int]]:
    reads = int(info.get("total_reads_processed", 0))
    cmds = {}
    for k, v in info.items():
        if k.startswith("cmdstat_"):
            calls = dict(p.split("=") for p in v.split(","))["calls"]
            cmds[k[8:]] = int(calls)
    return reads, cmds


# --------------------------------------------------------------------------- SIPp


@dataclass
class SippRun:
    scenario: str
    workdir: Path
    port: int = field(default_factory=free_udp_port)
    remote: str | None = None
    args: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None

    @property
    def stat_path(self) -> Path:
        return self.workdir / f"{self.scenario}-{self.port}.csv"

    def start(self) -> SippRun:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            "sipp", "-sf", str(SCENARIOS / f"{self.scenario}.xml"), "-i", "127.0.0.1",
            "-p", str(self.port), "-nostdin", "-max_recv_loops", "10000",
            "-max_sched_loops", "10000", "-buff_size", "4194304",
            "-trace_err", "-error_file", str(self.workdir / f"{self.scenario}-{self.port}.err"),
            "-trace_stat", "-stf", str(self.stat_path), "-fd", "1",
            *self.args,
        ]
        if self.remote:
            cmd.append(self.remote)
        out = open(self.workdir / f"{self.scenario}-{self.port}.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=self.workdir, start_new_session=True,
        )
        out.close()
        return self

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rows(self) -> list[dict[str, str]]:
        """The statistics lines SIPp has written so far (a line still being written, read
        while SIPp runs, is left for the next call)."""
        try:
            text = self.stat_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()
        return [r for r in csv.DictReader(lines, delimiter=";") if r.get("CurrentTime")]


def _n(row: dict[str, str], key: str) -> float:
    try:
        return float(row.get(key) or 0)
    except ValueError:
        return 0.0


def _rtt_ms(row: dict[str, str], key: str = "ResponseTime1(P)") -> float:
    """SIPp writes response times as HH:MM:SS:uuuuuu (the last field in microseconds)."""
    text = (row.get(key) or "").strip()
    try:
        h, m, s, us = (float(p) for p in text.split(":")[-4:])
    except ValueError:
        return 0.0
    return ((h * 60 + m) * 60 + s) * 1000 + us / 1000


# --------------------------------------------------------------------------- a lab


class BenchKamailio(Kamailio):
    """The test harness' Kamailio with room for load: tm keeps every finished non-INVITE
    transaction for its wait timer (5 s), so 64 MB of shared memory runs out near
    1400 REFER/s and Kamailio answers 500 "out of mem" long before its CPU is spent."""

    shm_mb = 1024
    mem_manager = "qm"  # Kamailio's default; "tlsf" or "fm" for the production allocators
    tree = ""  # a --base tree: its referee_kemi.py, and its kemi ahead of the venv's

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("-m") + 1] = str(self.shm_mb)
        if self.tree:
            script = Path(self.tree) / "config-examples" / "kamailio" / "referee_kemi.py"
            cmd = [f'REFEREE_SCRIPT="{script}"' if c.startswith("REFEREE_SCRIPT=") else c
                   for c in cmd]
        return cmd + ["-x", self.mem_manager, "-X", self.mem_manager]

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.tree:
            env["PYTHONPATH"] = self.tree  # ahead of the venv's editable install
        return env


class Lab:
    """redis-server + Kamailio (one variant) + a SIPp UAS behind it."""

    def __init__(self, variant: Variant, root: Path, workers: int, uas: str):
        self.variant = variant
        self.dir = root / variant.name
        self.dir.mkdir(parents=True)
        self.workers = workers
        self.uas_scenario = uas
        self.redis = RedisServer(self.dir)
        self.cluster = None
        self.kamailio: BenchKamailio | None = None
        self.uas: SippRun | None = None

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.redis.start()
        url = self.redis.url
        if self.variant.cluster:
            from tests.support.redis_cluster import RedisCluster

            self.cluster = RedisCluster(self.dir / "cluster")
            self.cluster.start()
            url = self.cluster.url
        conf = None
        defines = list(self.variant.defines)
        if self.variant.referee:
            db = self.dir / "policy.db"
            init = subprocess.run([REFEREE_CLI, "--db", str(db), "db", "init"],
                                  capture_output=True, text=True, timeout=60)
            if init.returncode != 0:
                raise RuntimeError(f"referee db init failed: {init.stderr}")
            conf = self.dir / "referee.toml"
            conf.write_text(
                f'policy_db = "{db}"\npolicy_check_interval_s = 1.0\n'
                f'[redis]\nurl = "{url}"\ntimeout_ms = 50\n'
                + self.variant.toml_extra
            )
        if self.variant.ndb_redis:
            defines.append(f'REDIS_SERVER="name=rd;addr=127.0.0.1;port={self.redis.port};db=0"')
        cfg = self.variant.cfg
        if self.variant.cfg_patch:
            copy = self.dir / "cfg"
            shutil.copytree(REPO / "config-examples" / "kamailio", copy)
            text = (copy / cfg).read_text()
            for old, new in self.variant.cfg_patch:
                if old not in text:
                    raise RuntimeError(f"{self.variant.name}: {old!r} is not in {cfg} any more")
                text = text.replace(old, new)
            (copy / cfg).write_text(text)
            cfg = str(copy / cfg)
        self.kamailio = BenchKamailio(
            self.dir / "kamailio", conf, cfg=cfg, workers=self.workers,
            sweep_interval=2, defines=tuple(defines),
        )
        self.kamailio.ndb = self.variant.referee_ndb
        self.kamailio.tree = self.variant.tree
        self.kamailio.start(timeout=20)
        self.uas = SippRun(self.uas_scenario, self.dir / "sipp").start()
        time.sleep(0.3)
        if self.uas.proc.poll() is not None:
            raise RuntimeError(f"SIPp UAS exited at once, see {self.dir / 'sipp'}")

    def stop(self) -> None:
        if self.uas is not None:
            self.uas.stop()
        if self.kamailio is not None:
            self.kamailio.stop()
        self.redis.stop(kill=True)
        if self.cluster is not None:
            self.cluster.stop()

    @property
    def all_pids(self) -> list[int]:
        return [*self.kamailio_pids, *self.redis_pids, self.uas.proc.pid]

    @property
    def redis_pids(self) -> list[int]:
        """The Redis referee uses: the single server, or the Cluster's three nodes."""
        if self.cluster is not None:
            return [n.proc.pid for n in self.cluster.nodes]
        return [self.redis.pid]

    @property
    def redis_ports(self) -> list[int]:
        if self.cluster is not None:
            return [n.port for n in self.cluster.nodes]
        return [self.redis.port]

    def redis_counts(self) -> tuple[int, dict[str, int]]:
        """Round trips and commands, summed over the Redis referee uses."""
        reads, cmds = 0, {}
        for port in self.redis_ports:
            r, c = redis_counts(redis_info(port))
            reads += r
            for k, v in c.items():
                cmds[k] = cmds.get(k, 0) + v
        return reads, cmds

    @property
    def kamailio_pids(self) -> list[int]:
        assert self.kamailio is not None and self.kamailio.proc is not None
        return process_tree(self.kamailio.proc.pid)

    def uac(self, scenario: str, *args: str) -> SippRun:
        assert self.kamailio is not None and self.uas is not None
        return SippRun(
            scenario, self.dir / "sipp", remote=self.kamailio.address,
            args=("-key", "uas", f"127.0.0.1:{self.uas.port}", *args),
        )

    def python_errors(self) -> list[str]:
        return self.kamailio.python_errors() if self.kamailio else []


def system_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, /proc/stat)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / CLK_TCK


def own_children_s() -> float:
    """CPU of this script's finished children (the SIPp UACs once reaped)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def own_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def wait_quiet(labs: list[Lab], limit_pct: float, most_s: float) -> float:
    """Wait (up to most_s) until the machine's CPU use outside our labs is below limit_pct
    of one CPU over a 1 s sample; return the last sample (%).  Other jobs on the box
    inflate CPU per message (cache, lock spinning), so measure in quiet moments."""
    deadline = time.monotonic() + most_s
    while True:
        pids = [p for lab in labs for p in lab.all_pids]
        b0, o0, s0 = system_busy_s(), cpu_seconds(pids), own_s()
        time.sleep(1.0)
        foreign = (system_busy_s() - b0) - (cpu_seconds(pids) - o0) - (own_s() - s0)
        pct = max(foreign, 0.0) * 100
        if pct < limit_pct or time.monotonic() > deadline:
            return round(pct, 1)


def fixed_rate(lab: Lab, scenario: str, rate: int, seconds: float) -> dict:
    """Run `scenario` at `rate` per second for `seconds`; Kamailio's (and Redis') CPU per
    completed call, Redis traffic per completed call, and how busy the rest of the
    machine was meanwhile (foreign_cpu_pct, % of one CPU)."""
    calls = int(rate * seconds)
    uac = lab.uac(scenario, "-r", str(rate), "-m", str(calls),
                  "-timeout", f"{int(seconds * 3 + 30)}s")
    pids = lab.kamailio_pids
    others = [*lab.redis_pids, lab.uas.proc.pid]
    reads0, cmds0 = lab.redis_counts()
    k0, r0, o0 = cpu_seconds(pids), cpu_seconds(lab.redis_pids), cpu_seconds(others)
    b0, c0, s0, t0 = system_busy_s(), own_children_s(), own_s(), time.monotonic()
    try:
        uac.start()
        uac.wait(timeout=seconds * 3 + 40)
    finally:
        uac.stop()  # a no-op once it has finished; on ^C it must not outlive us
    time.sleep(0.3)  # let the last answers leave
    k1, r1, o1 = cpu_seconds(pids), cpu_seconds(lab.redis_pids), cpu_seconds(others)
    b1, c1, s1, t1 = system_busy_s(), own_children_s(), own_s(), time.monotonic()
    reads1, cmds1 = lab.redis_counts()
    if sorted(lab.kamailio_pids) != sorted(pids):
        raise RuntimeError("Kamailio's process tree changed during the run")
    foreign = (b1 - b0) - (k1 - k0) - (o1 - o0) - (c1 - c0) - (s1 - s0)
    rows = uac.rows()
    last = rows[-1] if rows else {}
    ok = int(_n(last, "SuccessfulCall(C)"))
    failed = int(_n(last, "FailedCall(C)"))
    retrans = int(_n(last, "Retransmissions(C)"))
    if ok == 0:
        raise RuntimeError(f"no call succeeded at {rate}/s; see {lab.dir / 'sipp'}")
    cmds = {k: v - cmds0.get(k, 0) for k, v in cmds1.items() if v - cmds0.get(k, 0) > 0}
    cmds.pop("info", None)
    return {
        "rate": rate, "seconds": round(t1 - t0, 2), "ok": ok, "failed": failed,
        "retransmissions": retrans,
        "kamailio_cpu_s": round(k1 - k0, 4),
        "redis_cpu_s": round(r1 - r0, 4),
        "cpu_us_per_call": round((k1 - k0) / ok * 1e6, 1),
        "redis_cpu_us_per_call": round((r1 - r0) / ok * 1e6, 1),
        "redis_reads": reads1 - reads0 - len(lab.redis_ports),  # our INFO on each
        "redis_cmds": cmds,
        "foreign_cpu_pct": round(max(foreign, 0.0) / (t1 - t0) * 100, 1),
    }


def ramp(lab: Lab, scenario: str, start: int, step: int, cap: int, rtt_limit_ms: float) -> dict:
    """Raise the rate by `step` every second from `start`; the max rate sustained is the
    best second before the first bad one (failures, >1% retransmissions, slow answers)."""
    seconds = (cap - start) // step + 3
    uac = lab.uac(scenario, "-r", str(start), "-rate_increase", str(step),
                  "-rate_interval", "1s", "-rate_max", str(cap),
                  "-timeout", f"{seconds + 20}s")
    try:
        uac.start()
        return _follow_ramp(uac, seconds, rtt_limit_ms)
    finally:
        uac.stop()


def _follow_ramp(uac: SippRun, seconds: int, rtt_limit_ms: float) -> dict:
    best, bad_streak, why = 0.0, 0, "reached the cap"
    per_second: list[dict] = []
    seen = 0
    deadline = time.monotonic() + seconds + 25
    while uac.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.25)
        rows = uac.rows()
        for row in rows[seen:]:
            seen += 1
            period = _n(row, "ElapsedTime(P)") or 1.0
            if isinstance(period, float) and period > 1000:  # not seconds
                period = 1.0
            out = _n(row, "OutgoingCall(P)")
            ok = _n(row, "SuccessfulCall(P)")
            rtx = _n(row, "Retransmissions(P)")
            fail = _n(row, "FailedCall(P)")
            rtt = _rtt_ms(row)
            target = _n(row, "TargetRate")
            per_second.append({"target": target, "sent": out, "ok": ok, "retrans": rtx,
                               "failed": fail, "rtt_ms": round(rtt, 1)})
            if out == 0 and ok == 0:
                continue
            bad = fail > 0 or rtx > 0.01 * max(out, 1) or rtt > rtt_limit_ms
            if bad:
                bad_streak += 1
                if bad_streak >= 2:
                    why = (f"at target {target:.0f}/s: failed {fail:.0f}, retrans {rtx:.0f}, "
                           f"rtt {rtt:.0f} ms")
                    break
            else:
                if bad_streak == 0:
                    best = max(best, ok)
                bad_streak = 0
        if bad_streak >= 2:
            break
    return {"max_per_s": best, "stopped": why, "per_second": per_second}


# --------------------------------------------------------------------------- main


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    kam = subprocess.run(["kamailio", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    sipp = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "kamailio": kam, "sipp": sipp.split("\n")[0]}


def _spread(xs: list[float], fmt: str = "{:.2f}") -> str:
    """median (min-max)"""
    if not xs:
        return "-"
    med = fmt.format(statistics.median(xs))
    if len(xs) == 1:
        return med
    return f"{med} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def base_tree(commit: str, root: Path) -> Path:
    """The source of `commit` (git archive), for the variants that run it (--base)."""
    tree = root / "base-tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit],
                             capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=60)
    return tree


def with_base(variants: dict[str, Variant], names: list[str], tree: Path) -> list[str]:
    """Add "<name>@base" beside each referee variant of `names`: the same lab running the
    base commit's kemi and cfg (interleaved with the others, so noise hits both alike)."""
    out = list(names)
    for n in names:
        v = variants[n]
        if not v.referee or v.cfg.startswith("/"):
            continue
        b = f"{n}@base"
        variants[b] = replace(v, name=b, tree=str(tree),
                              cfg=str(tree / "config-examples" / "kamailio" / v.cfg))
        out.append(b)
    return out


def run_part(kind: str, names: list[str], args, root: Path) -> dict:
    """Start every variant's lab, warm each up, then measure them in interleaved chunks
    (the order rotates each round) so background noise hits all variants alike."""
    variants, uas, uac, rate, unit = {
        "refer": (REFER_VARIANTS, "refer-uas", "refer-uac", args.rate, "REFER"),
        "transfers": (TRANSFER_VARIANTS, "transfer-uas", "transfer-uac", args.transfer_rate,
                      "transfer"),
        "calls": (CALL_VARIANTS, "call-uas", "call-uac", args.call_rate, "call"),
    }[kind]
    out: dict = {n: {"chunks": []} for n in names}
    with contextlib.ExitStack() as stack:
        labs = {n: stack.enter_context(Lab(variants[n], root, args.workers, uas)) for n in names}
        for n in names:  # imports, policy load, Redis connections, and tm's tables and
            fixed_rate(labs[n], uac, rate, 6)  # memory at their steady state (wait timer 5 s)
        rounds = 2 * args.rounds if kind == "calls" else args.rounds  # calls: 5% is subtle
        for rnd in range(rounds):
            k = rnd % len(names)
            for n in names[k:] + names[:k]:
                for _attempt in range(2):
                    quiet = wait_quiet(list(labs.values()), args.quiet_pct, args.quiet_wait)
                    m = fixed_rate(labs[n], uac, rate, args.seconds)
                    m["quiet_before_pct"] = quiet
                    if m["foreign_cpu_pct"] <= 2 * args.quiet_pct:
                        break  # else: something else ran meanwhile, measure again
                out[n]["chunks"].append(m)
                print(f"  [{rnd}] {kind} {n:15s} {m['cpu_us_per_call']:7.1f} µs/{unit}  "
                      f"ok {m['ok']} failed {m['failed']} retrans {m['retransmissions']}  "
                      f"other load {m['foreign_cpu_pct']:.0f}%", flush=True)
        if kind == "refer" and not args.no_ramp:
            for n in names:
                # Scale the ramp to the variant: its CPU per REFER bounds what the box can
                # carry (all CPUs for Kamailio alone); start at 1/8 of that, ~25 steps.
                ch = out[n]["chunks"]
                bound = (os.cpu_count() or 1) * sum(c["ok"] for c in ch) / sum(
                    c["kamailio_cpu_s"] for c in ch)
                start = max(100, int(bound / 8) // 100 * 100)
                step = max(20, int(bound / 25) // 10 * 10)
                wait_quiet(list(labs.values()), args.quiet_pct, args.quiet_wait)
                r = ramp(labs[n], uac, start, step, int(bound * 1.5), args.rtt_limit_ms)
                out[n].update(max_per_s=r["max_per_s"], ramp_stopped=r["stopped"],
                              ramp=r["per_second"])
                print(f"  ramp {n:15s} max {r['max_per_s']:.0f} {unit}/s  "
                      f"(stopped: {r['stopped']})", flush=True)
        for n in names:
            out[n]["python_errors"] = labs[n].python_errors()[:5]
    for n in names:
        ch = out[n]["chunks"]
        ok = sum(c["ok"] for c in ch)
        out[n]["ok"] = ok
        out[n]["cpu_us"] = round(sum(c["kamailio_cpu_s"] for c in ch) / ok * 1e6, 1)
        out[n]["redis_cpu_us"] = round(sum(c["redis_cpu_s"] for c in ch) / ok * 1e6, 1)
        out[n]["redis_reads"] = round(sum(c["redis_reads"] for c in ch) / ok, 3)
        cmds: dict[str, int] = {}
        for c in ch:
            for k, v in c["redis_cmds"].items():
                cmds[k] = cmds.get(k, 0) + v
        out[n]["redis_cmds"] = {k: round(v / ok, 2) for k, v in sorted(cmds.items())}
    return out


def print_base_ratios(part: dict, with_max: bool) -> None:
    """This tree against --base, variant by variant (< 1: this tree costs less)."""
    for b in part:
        if b.endswith("@base") and b[: -len("@base")] in part:
            print("  " + ratio_lines(part, b[: -len("@base")], b, with_max))


def variant_line(name: str, v: dict, unit: str) -> str:
    """One variant's summary: CPU per unit (a transfer: REFER + 2 NOTIFY) and Redis."""
    per_round = [c["cpu_us_per_call"] for c in v["chunks"]]
    line = (f"  {name:15s} {v['cpu_us']:6.1f} µs/{unit} (rounds {_spread(per_round, '{:.0f}')})"
            f"  Redis/{unit}: {v['redis_reads']:.2f} round trips, "
            f"{v['redis_cpu_us']:.0f} µs CPU, commands {v['redis_cmds']}")
    if v.get("python_errors"):
        line += f"\n    PYTHON ERRORS: {v['python_errors']}"
    return line


def ratio_lines(part: dict, a: str, b: str, with_max: bool) -> str:
    per_round = [x["cpu_us_per_call"] / y["cpu_us_per_call"]
                 for x, y in zip(part[a]["chunks"], part[b]["chunks"], strict=True)]
    line = (f"CPU {a}/{b}: {part[a]['cpu_us'] / part[b]['cpu_us']:.2f} overall, per round "
            f"{_spread(per_round)}")
    if with_max and part[a].get("max_per_s") and part[b].get("max_per_s"):
        line += f"; max rate {a}/{b}: {part[a]['max_per_s'] / part[b]['max_per_s']:.2f}"
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("refer", "transfers", "calls"),
                    help="run one part only")
    ap.add_argument("--variants", help="comma-separated REFER variants "
                    f"(default: {','.join(REFER_VARIANTS)})")
    ap.add_argument("--transfer-variants", help="comma-separated transfer variants "
                    f"(default all: {','.join(TRANSFER_VARIANTS)})")
    ap.add_argument("--call-variants", help="comma-separated call variants "
                    f"(default: {','.join(CALL_VARIANTS)})")
    ap.add_argument("--workers", type=int, default=2, help="Kamailio SIP workers (default 2)")
    ap.add_argument("--rate", type=int, default=500, help="fixed REFER rate per s (default 500)")
    ap.add_argument("--call-rate", type=int, default=300, help="fixed calls/s (default 300)")
    ap.add_argument("--transfer-rate", type=int, default=200,
                    help="fixed complete transfers/s (default 200)")
    ap.add_argument("--seconds", type=float, default=5, help="length of one chunk (default 5)")
    ap.add_argument("--rounds", type=int, default=4,
                    help="REFER chunks per variant (default 4; calls get twice as many)")
    ap.add_argument("--rtt-limit-ms", type=float, default=50.0,
                    help="a ramp second with a slower mean answer is overload (default 50)")
    ap.add_argument("--no-ramp", action="store_true", help="skip the max REFER/s ramp")
    ap.add_argument("--quiet-pct", type=float, default=10.0,
                    help="wait for other load below this %% of one CPU (default 10)")
    ap.add_argument("--quiet-wait", type=float, default=20.0, help="but at most this long (s)")
    ap.add_argument("--mem", choices=("tlsf", "fm", "qm"), default="tlsf",
                    help="Kamailio's shm/pkg allocator (-x/-X) for every variant (default "
                         "tlsf; qm, the debugging default, spends up to half the CPU in "
                         "qm_malloc under this load)")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--base", metavar="COMMIT",
                    help="also run each referee variant as <name>@base from this commit's "
                         "kemi and cfg, and report this tree / base")
    args = ap.parse_args(argv)

    for tool in ("kamailio", "sipp", "redis-server"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin"):
            print(f"bench: {tool} not found (bash .ci/setup installs it)", file=sys.stderr)
            return 2
    refer_names = args.variants.split(",") if args.variants else list(REFER_VARIANTS)
    for n in refer_names:
        if n not in REFER_VARIANTS:
            ap.error(f"unknown variant {n!r}")
    for n in (args.transfer_variants or "").split(",") if args.transfer_variants else []:
        if n not in TRANSFER_VARIANTS:
            ap.error(f"unknown transfer variant {n!r}")

    BenchKamailio.mem_manager = args.mem
    root = Path(tempfile.mkdtemp(prefix="referee-bench-"))
    results: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"bench: {results['machine']['nproc']} x {results['machine']['cpu']}; "
          f"work dir {root}", flush=True)
    started = time.monotonic()
    tree = base_tree(args.base, root) if args.base else None
    try:
        if args.only in (None, "refer"):
            if tree is not None:
                refer_names = with_base(REFER_VARIANTS, refer_names, tree)
            results["refer"] = run_part("refer", refer_names, args, root)
        if args.only in (None, "transfers"):
            names = (args.transfer_variants.split(",") if args.transfer_variants
                     else list(TRANSFER_VARIANTS))
            if tree is not None:
                names = with_base(TRANSFER_VARIANTS, names, tree)
            results["transfers"] = run_part("transfers", names, args, root)
        if args.only in (None, "calls"):
            call_names = args.call_variants.split(",") if args.call_variants else list(
                CALL_VARIANTS)
            if tree is not None:
                call_names = with_base(CALL_VARIANTS, call_names, tree)
            results["calls"] = run_part("calls", call_names, args, root)
    finally:
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\nsummary ({args.rounds} (REFER) / {2 * args.rounds} (calls) interleaved rounds "
          f"of {args.seconds:g} s, "
          f"{results['elapsed_s']} s in all)")
    if "refer" in results:
        part = results["refer"]
        for n in refer_names:
            v = part[n]
            per_round = [c["cpu_us_per_call"] for c in v["chunks"]]
            print(f"  {n:15s} {v['cpu_us']:6.1f} µs/REFER (rounds {_spread(per_round, '{:.0f}')})"
                  f"  max {v.get('max_per_s', 0):5.0f} REFER/s  Redis/REFER: "
                  f"{v['redis_reads']:.2f} round trips, {v['redis_cpu_us']:.0f} µs CPU, "
                  f"commands {v['redis_cmds']}")
            if v["python_errors"]:
                print(f"    PYTHON ERRORS: {v['python_errors']}")
        for a in ("referee-native", "referee-python"):
            for b in ("native", "native-track"):
                if a in part and b in part:
                    print("  " + ratio_lines(part, a, b, not args.no_ramp))
        print_base_ratios(part, not args.no_ramp)
    if "transfers" in results:
        part = results["transfers"]
        for n in part:
            print(variant_line(n, part[n], "transfer"))
        if "referee-native" in part and "native-track" in part:
            print("  " + ratio_lines(part, "referee-native", "native-track", False))
        print_base_ratios(part, False)
    if "calls" in results:
        part = results["calls"]
        for n in part:
            print(variant_line(n, part[n], "call"))
        for a in ("hook-on", "index-on"):
            if a in part and "hook-off" in part:
                print("  " + ratio_lines(part, a, "hook-off", False))
        print_base_ratios(part, False)
    return 0

if __name__ == "__main__":
    sys.exit(main())
