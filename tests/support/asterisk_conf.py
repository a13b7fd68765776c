"""Asterisk's configuration files read the way Asterisk 20 reads them (main/config.c,
pbx_config.c), for checking config-examples/asterisk without an Asterisk to load them.

What matters for referee's examples: a `;` starts a comment unless written `\\;` (so a
`;` inside NoOp(...) cuts the line, leaving an unclosed parenthesis: Asterisk says "No
closing parenthesis found?"), `;-- ... --;` block comments, `[name](!)` templates and
`[name](tpl,...)` inheritance, `key = value` / `key => value`, and in extensions.conf
`exten => pattern,priority[(label)],App(args)` with `same => n[(label)],...`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


def strip_comment(line: str) -> str:
    r"""The line up to its first unescaped ';', with '\;' read as ';'."""
    out = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line) and line[i + 1] == ";":
            out.append(";")
            i += 2
            continue
        if ch == ";":
            break
        out.append(ch)
        i += 1
    return "".join(out).strip()


@dataclass
class Section:
    name: str
    template: bool = False
    parents: tuple[str, ...] = ()
    items: list[tuple[str, str]] = field(default_factory=list)
    line: int = 0

    def get(self, key: str) -> str | None:
        for k, v in reversed(self.items):
            if k == key:
                return v
        return None


@dataclass
class ConfFile:
    path: Path
    sections: list[Section]

    def named(self, name: str) -> list[Section]:
        return [s for s in self.sections if s.name == name]

    def resolved(self, name: str, key: str) -> str | None:
        """`key` of the (non-template) sections called `name`, through their templates."""
        for section in reversed(self.named(name)):
            value = self._lookup(section, key, set())
            if value is not None:
                return value
        return None

    def of_type(self, name: str, kind: str, key: str) -> str | None:
        """pjsip.conf: `key` of the object `name` whose type is `kind` (an endpoint and an
        aor may share a name), through its templates."""
        for section in reversed(self.named(name)):
            if self._lookup(section, "type", set()) == kind:
                return self._lookup(section, key, set())
        return None

    def has(self, name: str, kind: str) -> bool:
        return any(self._lookup(s, "type", set()) == kind for s in self.named(name))

    def _lookup(self, section: Section, key: str, seen: set[str]) -> str | None:
        value = section.get(key)
        if value is not None:
            return value
        for parent in reversed(section.parents):
            if parent in seen:
                continue
            seen.add(parent)
            for p in reversed(self.named(parent)):
                found = self._lookup(p, key, seen)
                if found is not None:
                    return found
        return None


_SECTION = re.compile(r"^\[([^\]]+)\](?:\(([^)]*)\))?$")


def read(path: Path) -> ConfFile:
    sections: list[Section] = []
    current: Section | None = None
    in_block = False
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw
        if in_block:
            if "--;" not in line:
                continue
            line = line.split("--;", 1)[1]
            in_block = False
        if ";--" in line:
            head, _, tail = line.partition(";--")
            if "--;" in tail:
                line = head + tail.split("--;", 1)[1]
            else:
                line, in_block = head, True
        text = strip_comment(line)
        if not text:
            continue
        m = _SECTION.match(text)
        if m:
            opts = [o.strip() for o in (m.group(2) or "").split(",") if o.strip()]
            current = Section(m.group(1).strip(), "!" in opts,
                              tuple(o for o in opts if o != "!"), [], no)
            sections.append(current)
            continue
        if current is None:
            raise ValueError(f"{path.name}:{no}: a setting before any [section]: {text!r}")
        key, sep, value = text.partition("=>") if "=>" in text else text.partition("=")
        if not sep:
            raise ValueError(f"{path.name}:{no}: neither key = value nor key => value: {text!r}")
        current.items.append((key.strip(), value.strip()))
    return ConfFile(path, sections)


@dataclass(frozen=True)
class Step:
    """One dialplan priority."""

    context: str
    exten: str
    priority: int
    label: str
    app: str
    args: str


def _args_close(text: str) -> int | None:
    """Where the application's argument list opened at text[0] closes (None: never)."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
    return None


def dialplan(conf: ConfFile) -> list[Step]:
    """extensions.conf's priorities; ValueError with the line's words for what Asterisk
    would refuse (an unclosed parenthesis, a `same` with no `exten` before it)."""
    steps: list[Step] = []
    for section in conf.sections:
        last: tuple[str, int] | None = None
        for key, value in section.items:
            if key not in ("exten", "same"):
                continue
            if key == "exten":
                pattern, _, rest = value.partition(",")
            else:
                if last is None:
                    raise ValueError(f"[{section.name}]: 'same =>' with no extension before it")
                pattern, rest = last[0], value
            prio_text, _, app_text = rest.partition(",")
            m = re.fullmatch(r"\s*(\d+|n|hint)\s*(?:\(([^)]*)\))?\s*", prio_text)
            if m is None:
                raise ValueError(f"[{section.name}] {pattern}: bad priority {prio_text!r}")
            if m.group(1) == "n":
                if last is None or last[0] != pattern.strip():
                    raise ValueError(f"[{section.name}] {pattern}: priority n with none before")
                prio = last[1] + 1
            elif m.group(1) == "hint":
                continue
            else:
                prio = int(m.group(1))
            app, paren, args = app_text.strip().partition("(")
            if paren:
                close = _args_close("(" + args)
                if close is None:
                    raise ValueError(f"[{section.name}] {pattern},{prio}: No closing "
                                     f"parenthesis found? {app_text.strip()!r}")
                args = args[: close - 1]
            steps.append(Step(section.name, pattern.strip(), prio, m.group(2) or "",
                              app.strip(), args))
            last = (pattern.strip(), prio)
    return steps
