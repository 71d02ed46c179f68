"""Provider rules: ``rules/*.yaml``, data that tunes the generic parsers for one sender.

A rule matches a message by regexes on its sender, subject, headers or body, and may pick
the parser, add labels to the synonym table, fix values (``source: HomeProMatch``) and
transform raw values (extract / replace / strip / case). Rules hold no Python: every file
is checked against a pydantic schema when loaded, and every problem is reported as
``rules/x.yaml: match.from: reason`` in one ``ConfigError``. See docs/providers.md.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from daemon.errors import ConfigError
from daemon.parse.labels import SYNONYMS, Found, label_key
from daemon.parse.model import LEAD_FIELDS, DecodedMessage

ParserName = Literal["auto", "adf", "json", "csv", "labels", "html_table"]
#: What a label may map to: the synonym table's fields, or "ignore" to drop a label.
TARGETS = frozenset(SYNONYMS) | {"ignore"}
#: What ``fixed`` may set: plain text fields (not the appointment or the account).
FIXABLE = frozenset(LEAD_FIELDS) - {"appointment_requested", "appointment_at", "account"}
MAX_PATTERN = 500
BODY_WINDOW = 20_000


def _compile(pattern: str) -> re.Pattern[str]:
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"pattern longer than {MAX_PATTERN} characters")
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"invalid regex: {exc}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Match(_Strict):
    """Every condition given must hold; regexes are searched, case-insensitive."""

    sender: str | None = Field(None, alias="from")
    from_name: str | None = None
    subject: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None

    @field_validator("sender", "from_name", "subject", "body")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value

    @field_validator("headers")
    @classmethod
    def _header_regexes(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern in value.values():
            _compile(pattern)
        return {name.lower(): pattern for name, pattern in value.items()}

    @model_validator(mode="after")
    def _not_empty(self) -> Match:
        if not (self.sender or self.from_name or self.subject or self.headers or self.body):
            raise ValueError("give at least one of from, from_name, subject, headers, body")
        return self


class Transform(_Strict):
    """One step; exactly one key: extract (group 1, or the whole match), replace, strip, case."""

    extract: str | None = None
    replace: dict[str, str] | None = None
    strip_prefix: str | None = None
    strip_suffix: str | None = None
    case: Literal["upper", "lower", "title"] | None = None

    @model_validator(mode="after")
    def _one(self) -> Transform:
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                "each transform step has exactly one of extract, replace, "
                "strip_prefix, strip_suffix, case"
            )
        if self.extract is not None:
            _compile(self.extract)
        if self.replace is not None:
            if set(self.replace) != {"pattern", "with"}:
                raise ValueError("replace takes {pattern: REGEX, with: TEXT}")
            _compile(self.replace["pattern"])
        return self

    def apply(self, value: str) -> str:
        if self.extract is not None:
            found = _compile(self.extract).search(value)
            return (found.group(1) if found.re.groups else found.group(0)) if found else value
        if self.replace is not None:
            return _compile(self.replace["pattern"]).sub(self.replace["with"], value)
        if self.strip_prefix is not None and value.startswith(self.strip_prefix):
            return value[len(self.strip_prefix) :]
        if self.strip_suffix and value.endswith(self.strip_suffix):
            return value[: -len(self.strip_suffix)]
        return {"upper": value.upper, "lower": value.lower, "title": value.title}.get(
            self.case or "", lambda: value
        )()


class RuleFile(_Strict):
    """The schema of one rules/*.yaml file."""

    description: str = ""
    match: Match
    parser: ParserName = "auto"
    labels: dict[str, str] = Field(default_factory=dict)
    fixed: dict[str, str] = Field(default_factory=dict)
    transforms: dict[str, list[Transform]] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _targets(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(f"{k!r} -> {v!r}" for k, v in value.items() if v not in TARGETS)
        if bad:
            raise ValueError(f"unknown field(s) {', '.join(bad)}; use one of {sorted(TARGETS)}")
        return {label_key(k): v for k, v in value.items()}

    @field_validator("fixed")
    @classmethod
    def _fixable(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(value) - FIXABLE)
        if bad:
            raise ValueError(f"cannot fix {', '.join(bad)}; fixable: {sorted(FIXABLE)}")
        return value

    @field_validator("transforms")
    @classmethod
    def _transformable(cls, value: dict[str, list[Transform]]) -> dict[str, list[Transform]]:
        bad = sorted(set(value) - (TARGETS - {"ignore"}))
        if bad:
            raise ValueError(f"unknown field(s) {', '.join(bad)}")
        return value


@dataclass(frozen=True)
class Rule:
    name: str  # the file stem: what ``ParseResult.rule`` reports
    spec: RuleFile

    @property
    def parser(self) -> ParserName:
        return self.spec.parser

    @property
    def labels(self) -> dict[str, str]:
        return self.spec.labels

    @functools.cached_property
    def _patterns(self) -> tuple[tuple[str, re.Pattern[str]], ...]:
        """(what, compiled regex) once per rule, cheapest checks first."""
        m = self.spec.match
        given = [("from", m.sender), ("from_name", m.from_name), ("subject", m.subject)]
        given += [(f"header:{name}", p) for name, p in m.headers.items()]
        given.append(("body", m.body))
        return tuple((what, _compile(p)) for what, p in given if p is not None)

    def matches(self, msg: DecodedMessage) -> bool:
        for what, pattern in self._patterns:
            if what == "from":
                text = msg.from_addr or ""
            elif what == "from_name":
                text = msg.from_name or ""
            elif what == "subject":
                text = msg.subject
            elif what == "body":
                text = msg.text[:BODY_WINDOW]
            else:
                text = " ".join(msg.headers.get(what.partition(":")[2], []))
            if not pattern.search(text):
                return False
        return True

    def apply(self, found: Found) -> Found:
        """Transforms on the raw values, then the fixed values in place of parsed ones."""
        pairs: list[tuple[str, str]] = []
        for key, value in found.pairs:
            for step in self.spec.transforms.get(key, ()):
                value = step.apply(value)
            pairs.append((key, value))
        fixed = self.spec.fixed
        pairs = [(k, v) for k, v in pairs if k not in fixed] + list(fixed.items())
        return Found(pairs=pairs, problems=list(found.problems))


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()

    def match(self, msg: DecodedMessage) -> Rule | None:
        """The first rule (in file name order) that matches ``msg``."""
        return next((rule for rule in self.rules if rule.matches(msg)), None)


def default_rules_dir() -> Path:
    """The repository's rules/ folder (next to the daemon package)."""
    return Path(__file__).resolve().parents[2] / "rules"


def _problems(where: str, exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"]) or "(file)"
        out.append(f"{where}: {loc}: {error['msg'].removeprefix('Value error, ')}")
    return out


def load_rules(directory: Path) -> RuleSet:
    """Load and check every rules/*.yaml; all problems of all files in one ConfigError."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: rules directory not found")
    rules: list[Rule] = []
    problems: list[str] = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        where = f"{directory.name}/{path.name}"
        try:
            data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            problems.append(f"{where}: (file): {str(exc).splitlines()[0][:200]}")
            continue
        try:
            rules.append(Rule(path.stem, RuleFile.model_validate(data)))
        except ValidationError as exc:
            problems.extend(_problems(where, exc))
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {directory}", problems=problems)
    return RuleSet(tuple(rules))
