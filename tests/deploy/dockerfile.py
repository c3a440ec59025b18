"""A small reader of the Dockerfile: stages, instructions, ENV/ARG/LABEL, exec forms.

Enough of the Dockerfile grammar for what the repository's Dockerfile uses:
line continuations, comment lines (also inside continuations), `KEY=VALUE` lists
with `$VAR` / `${VAR}` expansion, and JSON exec forms. It lets the tests run the
image's own command and environment without a Docker engine.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def run_text(self) -> str:
        """Every RUN instruction of the stage, joined."""
        return "\n".join(i.args for i in self.all("RUN"))

    def args(self, global_args: dict[str, str]) -> dict[str, str]:
        """ARG defaults in scope in this stage (a bare `ARG X` re-imports a global one)."""
        scope: dict[str, str] = {}
        for ins in self.all("ARG"):
            name, sep, default = ins.args.partition("=")
            name = name.strip()
            if sep:
                scope[name] = default.strip().strip('"')
            elif name in global_args:
                scope[name] = global_args[name]
        return scope

    def env(self, base_env: dict[str, str]) -> dict[str, str]:
        """The environment after every ENV of the stage, expanded against `base_env`."""
        env = dict(base_env)
        for ins in self.all("ENV"):
            for name, value in _pairs(ins.args):
                env[name] = expand(value, env)
        return env

    def labels(self, args: dict[str, str]) -> dict[str, str]:
        labels: dict[str, str] = {}
        for ins in self.all("LABEL"):
            for name, value in _pairs(ins.args):
                labels[name] = expand(value, args)
        return labels

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT or CMD as an argv; only the JSON (exec) form is accepted."""
        ins = self.last(keyword)
        if ins is None:
            return []
        argv = json.loads(ins.args)
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"line {ins.line}: {keyword} is not a JSON list of strings")
        return list(argv)

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """HEALTHCHECK options and its exec-form command."""
        ins = self.last("HEALTHCHECK")
        if ins is None:
            return {}, []
        options_text, sep, command = ins.args.partition("CMD")
        if not sep:
            raise ValueError(f"line {ins.line}: HEALTHCHECK without CMD")
        options = dict(o.removeprefix("--").split("=", 1) for o in options_text.split())
        argv = json.loads(command)
        return options, list(argv)


@dataclass(frozen=True)
class Dockerfile:
    global_args: dict[str, str]
    stages: tuple[Stage, ...] = field(default_factory=tuple)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def expand(value: str, env: dict[str, str]) -> str:
    """Docker's `$VAR` / `${VAR}` substitution (unset variables become empty)."""

    def sub(match: re.Match[str]) -> str:
        return env.get(match.group("braced") or match.group("plain") or "", "")

    return _VAR.sub(sub, value)


def _pairs(text: str) -> list[tuple[str, str]]:
    tokens = shlex.split(text)
    if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
        return [(tokens[0], " ".join(tokens[1:]))]
    return [tuple(t.split("=", 1)) for t in tokens]  # type: ignore[misc]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue  # comments (and parser directives); continuations skip them too
        if not current:
            start = number
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        lines.append((start, " ".join(p for p in current if p)))
        current = []
    if current:
        lines.append((start, " ".join(current)))
    return lines


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    base = ""
    name: str | None = None
    instructions: list[Instruction] = []
    for number, line in _logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            if base:
                stages.append(Stage(base, name, tuple(instructions)))
            words = args.split()
            base = expand(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            instructions = []
        elif not base:
            if keyword != "ARG":
                raise ValueError(f"line {number}: {keyword} before the first FROM")
            key, _, default = args.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            instructions.append(Instruction(keyword, args, number))
    if base:
        stages.append(Stage(base, name, tuple(instructions)))
    return Dockerfile(global_args, tuple(stages))
