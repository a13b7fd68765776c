"""`referee check --cfg FILE`: what referee needs of an operator's Kamailio cfg -- its
htables and rtimers -- read as Kamailio's preprocessor reads it (#!define, #!ifdef /
#!ifndef / #!else / #!endif, include_file / import_file, `-A NAME[=VALUE]` given with
-A here as to kamailio), and what the node does without each.  Inside Kamailio referee
says the same at run time, once the traffic that needs a missing piece comes.

Exit codes: 0 everything referee needs is there (warnings may be printed), 1 a piece
without which transfers are lost or stuck, or a cfg that cannot be read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kemi.cli import EXIT_FAILED, EXIT_OK


@dataclass(frozen=True)
class Need:
    kind: str  # "htable" or "rtimer"
    name: str
    required: bool
    without: str  # what the node does without it


NEEDS = (
    Need("htable", "referee", True,
         "the BYEs that end a transfer are not recognised and not recorded"),
    Need("rtimer", "referee", True,
         "no sweep: spooled events are never replayed, transfers whose final NOTIFY never "
         "comes never expire, 2xx answers left for later are never stored"),
    Need("htable", "referee_seq", False,
         "a transfer's NOTIFYs are relayed unordered (a transferor may refuse one that "
         "overtook the 202 or an earlier NOTIFY and never learn the outcome)"),
    Need("htable", "referee_held", False, "NOTIFYs are relayed unordered (as above)"),
    Need("htable", "referee_later", False,
         "what reply routes learn is stored from the reply route itself: a Redis trip "
         "there lets the next message of the transfer overtake the reply"),
    Need("htable", "referee_ans", False,
         "each REFER's 2xx is written to the order state and the deferred accepts "
         "(two locked writes instead of one)"),
)
ORDER = Need("rtimer", "referee_order", True,
             "NOTIFYs held for their turn are never resumed: they stay held until tm "
             "times them out")
ANCHORED = (
    Need("htable", "referee_cs", True, "anchored NOTIFYs cannot be numbered in Asterisk's "
         "dialog (its own requests' CSeq are not recorded)"),
    Need("htable", "referee_x", True, "requests after an anchored NOTIFY are not renumbered"),
    Need("rtimer", "referee_progress", True,
         "no anchored progress: the transferor gets no NOTIFY from the Asterisk side"),
)

_DIRECTIVE = re.compile(r"^\s*(?:#!|!!)\s*(\w+)\s*(.*?)\s*$")
_INCLUDE = re.compile(r"^\s*(?:#!|!!)?\s*(include_file|import_file)\s+\"([^\"]+)\"")
_MODPARAM = re.compile(
    r"^\s*modparam\s*\(\s*\"(\w+)\"\s*,\s*\"(\w+)\"\s*,\s*(\"[^\"]*\"|\w+)\s*\)")
_LOAD = re.compile(r"^\s*loadmodule\s+\"([^\"]+)\"")


class CfgError(Exception):
    """The cfg (or a file it includes) cannot be read."""


@dataclass
class Cfg:
    """What the preprocessed cfg declares."""

    defines: dict[str, str]
    htables: set[str] = field(default_factory=set)
    timers: set[str] = field(default_factory=set)  # rtimer "timer" names
    execs: dict[str, str] = field(default_factory=dict)  # rtimer "exec": timer -> route
    modules: set[str] = field(default_factory=set)
    python_load: str = ""
    files: list[Path] = field(default_factory=list)
    stack: list[Path] = field(default_factory=list)  # the files being read (includes)


def _value(token: str, defines: dict[str, str]) -> str:
    """A modparam's value: a string, or a #!define naming one."""
    if not token.startswith('"'):
        token = defines.get(token, token)
    return token.strip().strip('"')


def _params(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(";"):
        key, _, val = part.partition("=")
        if key.strip():
            out[key.strip()] = val.strip()
    return out


def read(path: Path, defines: dict[str, str]) -> Cfg:
    cfg = Cfg(dict(defines))
    _read(path, cfg, [], path.parent, required=True)
    return cfg


def _read(path: Path, cfg: Cfg, active: list[bool], top: Path, required: bool) -> None:
    if not path.is_absolute() and not path.exists():
        path = top / path
    if len(cfg.files) > 100 or path.resolve() in (f.resolve() for f in cfg.stack):
        raise CfgError(f"{path}: included from itself (an include_file loop)")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        if required:
            raise CfgError(f"{path}: {exc.strerror or exc}") from exc
        return
    cfg.files.append(path)
    cfg.stack.append(path)
    try:
        _lines(text, path, cfg, active, top)
    finally:
        cfg.stack.pop()


def _lines(text: str, path: Path, cfg: Cfg, active: list[bool], top: Path) -> None:
    in_comment = False
    for line in text.splitlines():
        if in_comment:
            if "*/" in line:
                in_comment = False
                line = line.split("*/", 1)[1]
            else:
                continue
        if line.lstrip().startswith("/*") and "*/" not in line:
            in_comment = True
            continue
        on = all(active)
        d = _DIRECTIVE.match(line)
        if d and d.group(1) in ("ifdef", "ifndef", "else", "endif", "define", "trydef",
                                "redefine", "undef", "ifexp"):
            word, rest = d.group(1), d.group(2)
            name = rest.split()[0] if rest.split() else ""
            if word == "ifdef":
                active.append(name in cfg.defines)
            elif word == "ifndef":
                active.append(name not in cfg.defines)
            elif word == "ifexp":
                active.append(True)  # not evaluated here: read as true
            elif word == "else" and active:
                active[-1] = not active[-1]
            elif word == "endif" and active:
                active.pop()
            elif on and word in ("define", "redefine") and name:
                cfg.defines[name] = rest[len(name):].strip()
            elif on and word == "trydef" and name:
                cfg.defines.setdefault(name, rest[len(name):].strip())
            elif on and word == "undef":
                cfg.defines.pop(name, None)
            continue
        if not on:
            continue
        inc = _INCLUDE.match(line)
        if inc:
            target = Path(inc.group(2))
            if not target.is_absolute():
                local = path.parent / target
                target = local if local.exists() else top / target
            _read(target, cfg, active, top, required=inc.group(1) == "include_file")
            continue
        if line.lstrip().startswith(("#", "//")):
            continue
        load = _LOAD.match(line)
        if load:
            cfg.modules.add(Path(_value(load.group(1), cfg.defines)).name)
            continue
        m = _MODPARAM.match(line)
        if not m:
            continue
        module, param, value = m.group(1), m.group(2), _value(m.group(3), cfg.defines)
        if module == "htable" and param == "htable":
            cfg.htables.add(value.split("=>", 1)[0].strip())
        elif module == "rtimer" and param == "timer":
            cfg.timers.add(_params(value).get("name", ""))
        elif module == "rtimer" and param == "exec":
            p = _params(value)
            cfg.execs[p.get("timer", "")] = p.get("route", "")
        elif module == "app_python3" and param == "load":
            cfg.python_load = value


def judge(cfg: Cfg) -> tuple[list[str], bool]:
    """The lines to print, and whether the cfg has everything referee needs."""
    lines: list[str] = []
    ok = True

    def check(need: Need) -> bool:
        nonlocal ok
        if need.kind == "htable":
            there, how = need.name in cfg.htables, "declared"
        else:
            there = need.name in cfg.timers and need.name in cfg.execs
            how = f"runs route {cfg.execs.get(need.name)}"
        if there:
            lines.append(f"cfg: {need.kind} {need.name}: {how}")
        elif need.required:
            ok = False
            lines.append(f"cfg: {need.kind} {need.name}: MISSING: {need.without}")
        else:
            lines.append(f"warning: cfg: {need.kind} {need.name} missing: {need.without}")
        return there

    if "app_python3.so" not in cfg.modules:
        ok = False
        lines.append("cfg: app_python3: NOT LOADED: referee never runs (loadmodule "
                     "\"app_python3.so\")")
    else:
        lines.append(f"cfg: app_python3 loads {cfg.python_load or '(no load parameter)'}")
    for need in NEEDS:
        check(need)
    if "referee_seq" in cfg.htables:
        check(ORDER)
    if "referee_ast" in cfg.htables:
        lines.append("cfg: htable referee_ast: declared (anchored mode)")
        for need in ANCHORED:
            check(need)
    else:
        lines.append("cfg: anchored mode not wired (no htable referee_ast): REFERs to an "
                     "Asterisk are relayed, not accepted here")
    if "referee_ix" in cfg.htables:
        lines.append("cfg: htable referee_ix: declared (the dialog index written by the cfg)")
    return lines, ok


def defines_from(values: list[str] | None) -> dict[str, str]:
    """`-A NAME` / `-A NAME=VALUE`, as kamailio takes them."""
    out = {}
    for item in values or []:
        name, _, value = item.partition("=")
        out[name.strip()] = value
    return out


def run(path: str, defines: list[str] | None) -> int:
    try:
        cfg = read(Path(path), defines_from(defines))
    except CfgError as exc:
        print(f"cfg {path}: UNREADABLE ({exc})")
        return EXIT_FAILED
    print(f"cfg {path}: read with {len(cfg.files) - 1} included file(s)")
    lines, ok = judge(cfg)
    for line in lines:
        print(line)
    return EXIT_OK if ok else EXIT_FAILED
