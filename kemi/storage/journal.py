"""A local spool for transfer events Redis could not take, replayed when it is back.

Why: the proxy must keep serving when Redis is gone (the circuit breaker stops waiting),
yet no transfer record may be lost.  Each Kamailio process appends the event it could
not store to its own file (one JSON line, one write(2) with O_APPEND, so lines never
interleave); the expiry sweep, which already runs in its own process, claims the files
by renaming them and replays their events in time order through the same store calls.
Events carry their original timestamp, and the state table tolerates the reordering a
replay can cause (it is the same reordering two workers can cause).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kemi.core import metrics
from kemi.core.state import Event
from kemi.storage.resp import RedisError
from kemi.storage.transfers import TransferStore

PENDING = "journal-"
CLAIMED = "replaying-"
BREAKER = "breaker-"  # breaker-<pid>.json: that process's Redis circuit breaker is open


@dataclass
class ReplayReport:
    applied: int = 0
    kept: int = 0  # left for the next sweep (Redis failed again)
    bad: int = 0  # lines that could not be read (reported, dropped)
    # What the replayed events decided, as counter names (kemi.core.metrics.recorded):
    # the glue bumps them, as it would have had Redis taken the events live.
    counts: Counter = field(default_factory=Counter)


class Journal:
    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    def _path(self, prefix: str) -> Path:
        return self.dir / f"{prefix}{os.getpid()}.jsonl"

    def append(self, op: str, **entry) -> None:
        """Spool one store call ('create', 'apply' or 'annotate'); raises OSError if the
        disk refuses."""
        line = json.dumps({"op": op, **entry}, separators=(",", ":")) + "\n"
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(PENDING), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def backlog(self) -> dict[str, int]:
        """Events waiting per spool file (one file per Kamailio process), for the operator;
        OSError if the directory cannot be read."""
        out = {}
        try:
            entries = sorted(os.scandir(self.dir), key=lambda e: e.name)
        except FileNotFoundError:
            return {}
        for e in entries:
            if e.name.startswith((PENDING, CLAIMED)):
                with open(e.path, "rb") as fh:
                    out[e.name] = sum(1 for line in fh if line.strip())
        return out

    # -- the circuit breaker's state, per process, for `referee check`.  The breaker lives
    # in each process's memory; what opened is written here (rare: only on a change).

    def breaker_opened(self, address: str, now: float) -> None:
        """This process's breaker opened; OSError if the disk refuses."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{BREAKER}{os.getpid()}.json"
        tmp = self.dir / f".{path.name}.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "since": now, "address": address}),
                       encoding="utf-8")
        os.rename(tmp, path)

    def breaker_closed(self) -> None:
        (self.dir / f"{BREAKER}{os.getpid()}.json").unlink(missing_ok=True)

    def forget_breakers(self) -> None:
        """At Kamailio's start: files of processes of an earlier run mean nothing now."""
        try:
            for e in os.scandir(self.dir):
                if e.name.startswith(BREAKER):
                    os.unlink(e.path)
        except FileNotFoundError:
            pass

    def breakers(self) -> list[dict]:
        """The processes whose breaker is open: pid, since, address, alive (False: the
        process is gone, the file is stale); OSError if the directory cannot be read."""
        out = []
        try:
            entries = sorted(os.scandir(self.dir), key=lambda e: e.name)
        except FileNotFoundError:
            return out
        for e in entries:
            if not (e.name.startswith(BREAKER) and e.name.endswith(".json")):
                continue
            try:
                info = json.loads(Path(e.path).read_text(encoding="utf-8"))
                pid = int(info["pid"])
                since, address = float(info["since"]), str(info["address"])
            except FileNotFoundError:
                continue  # closed while we looked
            except (ValueError, KeyError, TypeError):
                out.append({"file": e.name, "pid": None, "since": None, "address": "?",
                            "alive": False})
                continue
            out.append({"file": e.name, "pid": pid, "since": since, "address": address,
                        "alive": os.path.exists(f"/proc/{pid}")})
        return out

    def pending(self) -> bool:
        try:
            return any(e.name.startswith((PENDING, CLAIMED)) for e in os.scandir(self.dir))
        except FileNotFoundError:
            return False

    def replay(self, store: TransferStore, log: Callable[[str], None] = lambda _: None
               ) -> ReplayReport:
        """Apply every spooled call in time order; what Redis refuses again stays spooled."""
        report = ReplayReport()
        entries = []
        claimed = []
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return report
        for name in names:
            path = self.dir / name
            if name.startswith(PENDING):
                target = self.dir / (CLAIMED + name[len(PENDING):])
                try:
                    os.rename(path, target)  # atomic: writers reopen a fresh file
                except FileNotFoundError:
                    continue
                path = target
            elif not name.startswith(CLAIMED):
                continue
            claimed.append(path)
            for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entries.append(json.loads(raw))
                except json.JSONDecodeError:
                    report.bad += 1
                    log(f"journal {path.name}: unreadable line dropped: {raw[:80]!r}")
        entries.sort(key=lambda e: e.get("now", 0.0))
        rest: list[dict] = []
        for i, entry in enumerate(entries):
            try:
                report.counts.update(self._apply(store, entry))
                report.applied += 1
            except RedisError:
                rest = entries[i:]
                report.kept = len(rest)
                break
            except (KeyError, TypeError, ValueError) as exc:
                report.bad += 1
                log(f"journal entry dropped ({exc}): {entry!r:.120}")
        if rest:
            self._keep(rest)  # written before the claimed files go: nothing is lost
        for path in claimed:
            path.unlink(missing_ok=True)
        return report

    def _keep(self, entries: list[dict]) -> None:
        text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries)
        name = f"{CLAIMED}kept-{os.getpid()}-{time.time_ns()}.jsonl"
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.rename(tmp, self.dir / name)

    @staticmethod
    def _apply(store: TransferStore, e: dict) -> list[str]:
        """One spooled call made now; the counters it bumps."""
        if e["op"] == "create":
            store.create(
                e["call_id"], e["refer_id"], e["fields"], now=e["now"], deadline=e["deadline"],
                max_per_call=None, transferor=e.get("transferor"), rate_limit=None,
                transferee=e.get("transferee"), target=e.get("target"),
            )
        elif e["op"] == "annotate":
            store.annotate(e["call_id"], e["refer_id"], e["now"], e["fields"],
                           e.get("detail", ""))
        elif e["op"] == "apply":
            res = store.apply(
                e["call_id"], e.get("refer_id"), Event(e["event"]), e["now"],
                fields=e.get("fields"), deadline=e.get("deadline"), detail=e.get("detail", ""),
                seq=e.get("seq"),
            )
            return metrics.recorded(e["event"], res.outcome, res.final,
                                    None if res.new is None else str(res.new),
                                    e.get("fields") or {})
        else:
            raise ValueError(f"unknown op {e['op']!r}")
        return []
