"""The routing policy: for every outgoing message, which path it takes.

    durable     a file in the recipient's mailbox: at-least-once, retried, dead-lettered
    ephemeral   an event on the in-memory AgentBus: at-most-once, gone if nobody listens
    both        durable delivery, plus a bus notification for whoever listens now

`Policy.decide` is pure (no I/O): the same inputs always give the same `Decision`, which says
which rule chose the route. The order of the decision:

1. an explicit per-message override (``route=`` on send/publish);
2. the rules, in order; the first whose patterns, ``addressed`` and ``min_priority`` all fit wins;
3. the defaults: ``default_addressed`` (durable) for a message to one agent, ``default_broadcast``
   (ephemeral) for a message to whoever subscribes;
4. whatever was chosen, a ``CRITICAL`` message is never ephemeral only: ``ephemeral`` becomes ``durable``.

Topic patterns have dot-separated segments: a literal segment matches itself; ``*`` in the middle
matches exactly one segment (``dreamos.agent.*.task.command``); a last ``.*`` matches the prefix itself
and everything below it, as on the bus (``dreamos.query.*``); ``*`` alone matches every topic.

Rules come from a TOML file, or from ``[tool.hybridcomms.policy]`` in pyproject.toml::

    default_addressed = "durable"      # optional
    default_broadcast = "ephemeral"    # optional
    include_defaults = true            # append the shipped rules after these (default true)

    [[rules]]
    name = "billing is critical"       # optional; shown by `hybridcomms policy explain`
    match = ["billing.*"]              # one pattern or a list
    route = "durable"                  # durable | ephemeral | both
    addressed = true                   # optional: only messages to one agent (false: only broadcasts)
    min_priority = "HIGH"              # optional: only at or above this priority

A file that is not valid is refused when it is loaded, with its path, the line and the reason.

Every part that routes (`Comms`, the CLI, ``watch``, ``work``, the Dream.OS compat layer) gets its
policy from `find_policy`, which looks in one order and stops at the first it finds:

1. the argument (a `Policy`, or the path of a policy file: ``Comms(policy=...)``, ``--policy FILE``);
2. ``$HYBRIDCOMMS_POLICY`` (a path);
3. ``hybridcomms.toml`` in the working folder;
4. ``[tool.hybridcomms.policy]`` in ``pyproject.toml`` of the working folder (only if that table is
   there: any other pyproject.toml is passed over);
5. the shipped defaults (`DEFAULT_RULES`).

A file it names or finds that cannot be read or is not valid is a `PolicyError` (path, line), never a
silent fall back to the next. ``Policy.source`` is the file (or "built-in defaults") and
``Policy.found_by`` how it was found; ``Policy.provenance`` says both.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, TypeGuard

from . import _env, _fs
from ._urls import shown_url
from .backends import SCHEMES, served
from .errors import MessageError, PolicyError
from .message import Priority

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DEFAULT_RULES",
    "POLICY_ENV",
    "Decision",
    "Policy",
    "PolicyError",
    "Route",
    "Rule",
    "child_env",
    "compile_pattern",
    "find_policy",
]

#: The environment variable that names a policy file (step 2 of `find_policy`).
POLICY_ENV = _env.POLICY
#: The policy file looked for in the working folder (step 3 of `find_policy`).
POLICY_FILE = "hybridcomms.toml"
_PYPROJECT_TABLE = ("tool", "hybridcomms", "policy")


class Route(str, Enum):
    DURABLE = "durable"
    EPHEMERAL = "ephemeral"
    BOTH = "both"

    @property
    def durable(self) -> bool:
        return self is not Route.EPHEMERAL

    @property
    def ephemeral(self) -> bool:
        return self is not Route.DURABLE

    @classmethod
    def parse(cls, value: object) -> Route:
        if isinstance(value, Route):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        raise PolicyError(f"route must be durable, ephemeral or both, not {value!r}")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression for a policy pattern (see the module docstring)."""
    if not isinstance(pattern, str) or not pattern:
        raise PolicyError(f"a pattern must be a non-empty string, not {pattern!r}")
    if pattern == "*":
        return re.compile(r".+\Z", re.S)
    return re.compile(_dotted_regex(pattern) + r"\Z", re.S)


def _dotted_regex(pattern: str) -> str:
    """The regular expression of a pattern of dot-separated segments, one segment after another."""
    segments = pattern.split(".")
    last = len(segments) - 1
    return "".join(_segment_regex(pattern, seg, i, i == last) for i, seg in enumerate(segments))


def _segment_regex(pattern: str, seg: str, i: int, last: bool) -> str:
    """The regular expression of segment ``i`` of ``pattern``: a ``*`` (one segment; as the last of
    several, the prefix itself or anything below it), or a literal."""
    if seg == "*":
        return _star_regex(i, last)
    return _literal_regex(pattern, seg, i)


def _star_regex(i: int, last: bool) -> str:
    """A ``*`` segment: one segment, or (the last of several) the prefix itself or anything below it."""
    if last and i > 0:
        return r"(?:\..+)?"
    return r"\.[^.]+" if i else r"[^.]+"


def _literal_regex(pattern: str, seg: str, i: int) -> str:
    """A literal segment, which matches itself: refused if it is empty or holds a ``*``."""
    if not seg or "*" in seg:
        raise PolicyError(
            f"bad pattern {pattern!r}: '*' must be a whole segment, and no segment may be empty"
        )
    return ("\\." if i else "") + re.escape(seg)


@dataclass(frozen=True)
class Rule:
    """Route ``route`` for messages whose topic matches one of ``patterns``."""

    patterns: tuple[str, ...]
    route: Route
    name: str = ""
    addressed: bool | None = None
    min_priority: Priority | None = None
    backend: str | None = None  # where its durable copies go: a mailbox URL (redis://…), or None
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", _rule_patterns_given(self.patterns))
        object.__setattr__(self, "route", Route.parse(self.route))
        object.__setattr__(self, "min_priority", _optional_priority(self.min_priority))
        if self.backend is not None:
            _check_backend(self.backend)
        object.__setattr__(self, "_compiled", tuple(compile_pattern(p) for p in self.patterns))

    def matching_pattern(self, topic: str, priority: Priority, addressed: bool) -> str | None:
        if not self._admits(priority, addressed):
            return None
        for pattern, regex in zip(self.patterns, self._compiled, strict=True):
            if regex.match(topic):
                return pattern
        return None

    def _admits(self, priority: Priority, addressed: bool) -> bool:
        """Whether a message of this priority and addressing meets the rule's ``addressed`` and
        ``min_priority`` conditions (its patterns aside)."""
        if self.addressed is not None and self.addressed != addressed:
            return False
        return self.min_priority is None or priority >= self.min_priority

    def describe(self) -> str:
        bits = [f"route={self.route.value}", "match=" + ", ".join(self.patterns), *self._conditions()]
        return f"{self.name or '(unnamed)'}: " + "; ".join(bits)

    def _conditions(self) -> list[str]:
        """The rule's optional settings in words: addressing, minimum priority, backend."""
        bits = []
        if self.addressed is not None:
            bits.append("addressed only" if self.addressed else "broadcasts only")
        if self.min_priority is not None:
            bits.append(f"priority >= {self.min_priority.name}")
        if self.backend is not None:
            bits.append(f"backend={shown_url(self.backend)}")
        return bits


def _rule_patterns_given(patterns: tuple[str, ...] | str) -> tuple[str, ...]:
    """A rule's patterns as a tuple (one pattern may be given alone); refused if there is none."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    if not patterns:
        raise PolicyError("a rule needs at least one pattern in 'match'")
    return patterns


def _optional_priority(value: object) -> Priority | None:
    """A rule's ``min_priority`` as a `Priority` (any spelling `Priority.parse` reads), or None."""
    if value is None or isinstance(value, Priority):
        return value
    return Priority.parse(value)


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    reason: str
    rule: Rule | None = None
    pattern: str | None = None

    @property
    def backend(self) -> str | None:
        """Where the durable copy goes when the rule names a backend (a mailbox URL); None: the
        sender's own mailboxes (its URL, else files under its root). Meaningful only when
        ``route.durable``."""
        backend = self.rule.backend if self.rule is not None else None
        return None if backend in (None, "local") else backend


def _rules(*specs: tuple[str, Route, tuple[str, ...]]) -> tuple[Rule, ...]:
    return tuple(Rule(patterns, route, name) for name, route, patterns in specs)


D, E = Route.DURABLE, Route.EPHEMERAL

#: Dream.OS practice: commands, assignments, directives, queries that need an answer and their
#: responses are durable; status, heartbeats, discovery and debug are ephemeral.
DEFAULT_RULES: tuple[Rule, ...] = _rules(
    ("per-agent task commands", D, ("dreamos.agent.*.task.command", "dreamos.agent.*.task.command.*")),
    (
        "task commands and assignments",
        D,
        (
            "dreamos.task.command",
            "dreamos.task.lifecycle.assigned",
            "dreamos.task.request.*",
            "TASK_COMMAND",
            "TASK_ASSIGNMENT",
            "COMMAND",
        ),
    ),
    (
        "directives",
        D,
        ("dreamos.task.directive", "dreamos.coordination.directive.*", "DIRECTIVE"),
    ),
    (
        "queries and their responses",
        D,
        (
            "dreamos.query.*",
            "dreamos.supervisor.*",
            "dreamos.command.*",
            "dreamos.coordination.supervisor.approval.*",
            "dreamos.agent.prompt.*",
            "AGENT_QUERY",
            "AGENT_RESPONSE",
            "STATUS_QUERY",
            "RESPONSE",
            "REVIEW_REQUEST",
        ),
    ),
    (
        "status and heartbeats",
        E,
        (
            "dreamos.agent.status.*",
            "dreamos.system.agent.status_change",
            "dreamos.task.status.*",
            "dreamos.task.progress",
            "dreamos.coordination.heartbeat.*",
            "HEARTBEAT",
            "TASK_UPDATE",
        ),
    ),
    (
        "discovery",
        E,
        (
            "dreamos.agent.registered",
            "dreamos.agent.unregistered",
            "dreamos.system.agent.*",
            "dreamos.system.capability.*",
            "dreamos.agent.lifecycle.*",
        ),
    ),
    ("debug", E, ("dreamos.debug.*", "DEBUG_INFO")),
)


@dataclass(frozen=True)
class Policy:
    """An ordered list of rules and the two defaults. Immutable; `decide` is pure."""

    rules: tuple[Rule, ...] = DEFAULT_RULES
    default_addressed: Route = Route.DURABLE
    default_broadcast: Route = Route.EPHEMERAL
    source: str = "built-in defaults"
    #: Agent ids (fnmatch patterns, e.g. "Agent-*") whose mailboxes count as adopted by hybridcomms
    #: before their new/ folder exists: Dream.OS senders write native files for them, not legacy ones.
    adopt: tuple[str, ...] = ()
    #: How `find_policy` came to this policy ("$HYBRIDCOMMS_POLICY", "in the working folder", ...);
    #: empty for a policy built or loaded directly.
    found_by: str = field(default="", compare=False)
    _cache: dict[tuple[str, Priority, bool], Decision] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "default_addressed", Route.parse(self.default_addressed))
        object.__setattr__(self, "default_broadcast", Route.parse(self.default_broadcast))
        object.__setattr__(self, "adopt", tuple(self.adopt))

    @property
    def provenance(self) -> str:
        """Where this policy comes from, and how it was found: what the parts log when they start
        (printable: a path with bytes that are not UTF-8 shows them as ``\\xNN``)."""
        return _fs.shown(f"{self.source} ({self.found_by})" if self.found_by else self.source)

    @property
    def file(self) -> str | None:
        """The file `find_policy` found it in (an absolute path, to hand on as ``$HYBRIDCOMMS_POLICY``);
        None for the shipped defaults and for a policy built or loaded directly."""
        return self.source if self.found_by and os.path.isabs(self.source) else None

    def adopts(self, agent_id: str) -> bool:
        """True if the ``adopt`` list names this agent (see docs/compatibility.md)."""
        return any(fnmatch.fnmatchcase(agent_id, pattern) for pattern in self.adopt)

    def decide(
        self,
        topic: str,
        *,
        priority: Priority | str | int = Priority.MEDIUM,
        addressed: bool = False,
        override: Route | str | None = None,
    ) -> Decision:
        """The route for one message, and why."""
        prio = priority if type(priority) is Priority else Priority.parse(priority)
        if override is not None:
            decision = Decision(Route.parse(override), "explicit per-message override")
        else:
            key = (topic, prio, addressed)
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            decision = self._by_rules(topic, prio, addressed)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = decision
            return decision
        return _critical(decision, prio)

    def route(self, topic: str, **kwargs: Any) -> Route:
        return self.decide(topic, **kwargs).route

    def _by_rules(self, topic: str, prio: Priority, addressed: bool) -> Decision:
        for number, rule in enumerate(self.rules, 1):
            pattern = rule.matching_pattern(topic, prio, addressed)
            if pattern is not None:
                label = _rule_label(number, rule)
                return _critical(Decision(rule.route, f"{label}: pattern {pattern!r}", rule, pattern), prio)
        return _critical(self._default(addressed), prio)

    def _default(self, addressed: bool) -> Decision:
        """The decision for a message no rule matches: the default for its addressing."""
        if addressed:
            return Decision(self.default_addressed, "default for a message to one agent")
        return Decision(self.default_broadcast, "default for a broadcast")

    def describe(self) -> str:
        lines = [f"policy from {self.provenance}"]
        lines += [f"  {i}. {rule.describe()}" for i, rule in enumerate(self.rules, 1)]
        lines.append(f"  default for a message to one agent: {self.default_addressed.value}")
        lines.append(f"  default for a broadcast: {self.default_broadcast.value}")
        lines.append("  CRITICAL priority is never ephemeral only")
        if self.adopt:
            lines.append(f"  adopted (Dream.OS senders write new/ files): {', '.join(self.adopt)}")
        return "\n".join(lines)

    # -- loading (I/O lives here, never in decide) ---------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy TOML file, or the ``[tool.hybridcomms.policy]`` table of a pyproject.toml.

        Read as any file a user may point at: no blocking on a FIFO, at most 16 MiB."""
        p = Path(path)
        text = _read_policy_file(p)
        if p.name == "pyproject.toml":
            return cls.from_toml(text, source=str(p), table=("tool", "hybridcomms", "policy"))
        return cls.from_toml(text, source=str(p))

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<policy>", table: tuple[str, ...] = ()) -> Policy:
        data = _parse_toml(text, source)
        for key in table:
            value = data.get(key, {})
            if not isinstance(value, Mapping):
                raise PolicyError(f"[{'.'.join(table)}] must be a table", path=source)
            data = value
        return cls.from_mapping(data, source=source, text=text, header=".".join((*table, "rules")))

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, source: str = "<policy>", text: str = "", header: str = "rules"
    ) -> Policy:
        where = _SettingsText(source, text)
        _check_known_settings(data, where)
        rules = _rules_of(data.get("rules", []), where, header)
        include = data.get("include_defaults", True)
        if not isinstance(include, bool):
            raise where.error("include_defaults must be true or false", "include_defaults")
        kwargs: dict[str, Any] = _default_routes(data, where)
        kwargs["adopt"] = _adopt_patterns(data.get("adopt", []), where)
        return cls(rules=(*rules, *(DEFAULT_RULES if include else ())), source=source, **kwargs)


# -- reading the settings of a policy file ----------------------------------------------------------

_SETTINGS = {"rules", "default_addressed", "default_broadcast", "include_defaults", "adopt"}


@dataclass(frozen=True)
class _SettingsText:
    """The file a policy's settings came from, to report a mistake at the line of its key."""

    source: str
    text: str

    def error(self, reason: str, key: str) -> PolicyError:
        """A `PolicyError` at the line where ``key`` is set (if it is found in the text)."""
        return PolicyError(reason, path=self.source, line=_key_line(self.text, key))


def _check_known_settings(data: Mapping[str, Any], where: _SettingsText) -> None:
    """Refuse a setting this version does not know (a typo would otherwise be ignored)."""
    for key in data:
        if key not in _SETTINGS:
            raise where.error(f"unknown setting {key!r} (known: {', '.join(sorted(_SETTINGS))})", key)


def _rules_of(raw_rules: object, where: _SettingsText, header: str) -> list[Rule]:
    """The ``[[rules]]`` tables as rules, each mistake reported at its rule's lines."""
    if not isinstance(raw_rules, list):
        raise where.error("'rules' must be an array of tables ([[rules]])", "rules")
    lines = _table_lines(where.text, header) if raw_rules else []
    ends = [*lines[1:], None]
    return [
        _rule_from(raw, i, source=where.source, line=_nth(lines, i), text=where.text, end=_nth(ends, i))
        for i, raw in enumerate(raw_rules)
    ]


def _nth(items: Sequence[int | None], i: int) -> int | None:
    """Item ``i`` of ``items``, or None past their end."""
    return items[i] if i < len(items) else None


def _default_routes(data: Mapping[str, Any], where: _SettingsText) -> dict[str, Any]:
    """``default_addressed`` and ``default_broadcast`` as routes, for those that are set."""
    routes: dict[str, Any] = {}
    for key in ("default_addressed", "default_broadcast"):
        if key in data:
            try:
                routes[key] = Route.parse(data[key])
            except PolicyError as exc:
                raise where.error(f"{key}: {exc.reason}", key) from None
    return routes


def _adopt_patterns(adopt: object, where: _SettingsText) -> tuple[str, ...]:
    """The ``adopt`` setting: agent ids or patterns, each a non-empty string."""
    if not _strings(adopt) or not all(adopt):
        raise where.error("adopt must be an array of agent ids or patterns", "adopt")
    return tuple(adopt)


# -- finding the policy (the one order every part uses) ---------------------------------------------

_GIVEN, _FROM_ENV, _IN_CWD, _IN_PYPROJECT = (
    "given",
    f"${POLICY_ENV}",
    "in the working folder",
    "[tool.hybridcomms.policy]",
)


def find_policy(
    arg: Policy | str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Policy:
    """The routing policy, looked for in the one documented order (see the module docstring):
    ``arg`` (a `Policy` is used as it is; a path is loaded), ``$HYBRIDCOMMS_POLICY``,
    ``hybridcomms.toml`` in ``cwd``, ``[tool.hybridcomms.policy]`` in ``cwd``'s pyproject.toml, the
    shipped defaults. ``environ`` and ``cwd`` default to this process's.

    `PolicyError` (with the path, and the line where known) for a file that is named or found but
    cannot be read or is not valid: never a silent fall back to the next step."""
    if isinstance(arg, Policy):
        return arg
    if arg is not None and os.fspath(arg) != "":
        return _load_found(Path(arg), _GIVEN)
    return _found_unnamed(environ, cwd)


def _found_unnamed(environ: Mapping[str, str] | None, cwd: str | os.PathLike[str] | None) -> Policy:
    """The policy when no argument names one: ``$HYBRIDCOMMS_POLICY``, else the working folder's."""
    named = _env.value(POLICY_ENV, environ)
    if named:
        return _load_found(Path(named), _FROM_ENV)
    here = _working_folder(cwd)
    if here is None:  # the working folder was removed under us: nothing to find there
        return Policy(found_by=f"no ${POLICY_ENV}, and the working folder is gone")
    return _found_in(here)


def _working_folder(cwd: str | os.PathLike[str] | None) -> Path | None:
    """``cwd`` as an absolute path (default: this process's working folder); None if it is gone."""
    try:
        return Path.cwd() if cwd is None else Path(cwd).absolute()
    except OSError:
        return None


def _found_in(here: Path) -> Policy:
    """The policy of the folder ``here``: its hybridcomms.toml, else the policy table of its
    pyproject.toml, else the shipped defaults."""
    local = here / POLICY_FILE
    if os.path.lexists(local):  # a broken link or a folder by that name is an error, not "no file"
        return _load_found(local, _IN_CWD)
    pyproject = here / "pyproject.toml"
    policy = _from_pyproject(pyproject) if os.path.lexists(pyproject) else None
    if policy is not None:
        return policy
    return Policy(found_by=f"no ${POLICY_ENV}, no {POLICY_FILE} or [tool.hybridcomms.policy] in {here}")


def _from_pyproject(pyproject: Path) -> Policy | None:
    """The policy in ``[tool.hybridcomms.policy]`` of ``pyproject``; None if it has no such table."""
    text = _read_policy_file(pyproject)
    data: Any = _parse_toml(text, str(pyproject))
    for key in _PYPROJECT_TABLE:
        data = data.get(key) if isinstance(data, Mapping) else None
    if data is None:
        return None
    policy = Policy.from_toml(text, source=str(pyproject), table=_PYPROJECT_TABLE)
    return replace(policy, found_by=_IN_PYPROJECT)


def child_env(policy: Policy) -> dict[str, str]:
    """What a child process needs to find the same policy (`watch --exec`, `work`): ``$HYBRIDCOMMS_POLICY``
    naming its file; nothing for the shipped defaults or a policy built in code."""
    path = policy.file
    return {POLICY_ENV: path} if path is not None else {}


def _load_found(path: Path, found_by: str) -> Policy:
    return replace(Policy.load(path.absolute()), found_by=found_by)


def _read_policy_file(path: Path) -> str:
    """A policy file's text, read as any file a user may point at: no blocking on a FIFO, at most
    16 MiB, UTF-8."""
    try:
        return _fs.read_regular(path, 16 << 20, follow=True).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"not UTF-8 text: {exc}", path=str(path)) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PolicyError(f"cannot read the policy file: {reason}", path=str(path)) from None


def _parse_toml(text: str, source: str) -> Mapping[str, Any]:
    try:
        data: Mapping[str, Any] = tomllib.loads(text)
        return data
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        raise PolicyError(f"not valid TOML: {exc}", path=source, line=line) from None
    except RecursionError:
        line = _deepest_line(text)
        raise PolicyError(
            "nested too deeply to read (arrays or inline tables thousands of levels deep)",
            path=source,
            line=line,
        ) from None


def _rule_label(number: int, rule: Rule) -> str:
    """How a decision names the rule that made it: its number, and its name if it has one."""
    return f"rule {number} ({rule.name})" if rule.name else f"rule {number}"


def _critical(decision: Decision, prio: Priority) -> Decision:
    if prio is Priority.CRITICAL and decision.route is Route.EPHEMERAL:
        return Decision(
            Route.DURABLE,
            decision.reason + "; CRITICAL is never ephemeral only",
            decision.rule,
            decision.pattern,
        )
    return decision


_RULE_KEYS = {"name", "match", "route", "addressed", "min_priority", "backend"}


def _check_backend(backend: object) -> None:
    if not _valid_backend(backend):
        raise PolicyError(
            "'backend' must be \"local\" or a mailbox URL "
            f"({', '.join(s + '://' for s in SCHEMES)}), not {backend!r}"
        )


def _valid_backend(backend: object) -> bool:
    """Whether a rule's ``backend`` is ``"local"`` or a mailbox URL of a known scheme."""
    return isinstance(backend, str) and (backend == "local" or ("://" in backend and served(backend)))


def _rule_from(
    raw: object, index: int, *, source: str, line: int | None, text: str = "", end: int | None = None
) -> Rule:
    """A rule from its table; a mistake is reported at the line of the key it is about (found between
    the rule's ``[[rules]]`` line and the next one), else at that ``[[rules]]`` line."""
    site = _RuleText(index, source, line, text, end)
    table = _rule_table(raw, site)
    patterns = _rule_patterns(table["match"], site)
    addressed = table.get("addressed")
    if addressed is not None and not isinstance(addressed, bool):
        raise site.error("'addressed' must be true or false", "addressed")
    name = table.get("name", "")
    if not isinstance(name, str):
        raise site.error("'name' must be a string", "name")
    return _rule_parsed(table, patterns, addressed, name, site)


@dataclass(frozen=True)
class _RuleText:
    """Where rule ``index`` sits in its file: from its ``[[rules]]`` line to the next one (``end``)."""

    index: int
    source: str
    line: int | None
    text: str
    end: int | None

    def error(self, reason: str, key: str | None = None) -> PolicyError:
        """A `PolicyError` at the line of ``key`` in this rule, else at its ``[[rules]]`` line."""
        at = self.line
        if key is not None and self.line is not None:
            at = _key_line_between(self.text, key, self.line, self.end) or self.line
        return PolicyError(f"rule {self.index + 1}: {reason}", path=self.source, line=at)


def _rule_table(raw: object, site: _RuleText) -> Mapping[str, Any]:
    """``raw`` if it is a table of known keys with both ``match`` and ``route``."""
    if not isinstance(raw, Mapping):
        raise site.error("must be a table")
    _check_rule_keys(raw, site)
    if "match" not in raw or "route" not in raw:
        raise site.error("needs both 'match' and 'route'")
    return raw


def _check_rule_keys(raw: Mapping[str, Any], site: _RuleText) -> None:
    """Refuse a key a rule does not have (a typo would otherwise be ignored)."""
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise site.error(
            f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_RULE_KEYS))})"
        )


def _rule_patterns(match: Any, site: _RuleText) -> tuple[str, ...]:
    """A rule's ``match``: one pattern or a list of them."""
    patterns: Iterable[object] = [match] if isinstance(match, str) else match
    if not _strings(patterns):
        raise site.error("'match' must be a pattern or a list of patterns", "match")
    return tuple(patterns)


def _strings(value: object) -> TypeGuard[list[str]]:
    """Whether a setting read from TOML is an array of strings."""
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _rule_parsed(
    table: Mapping[str, Any], patterns: tuple[str, ...], addressed: bool | None, name: str, site: _RuleText
) -> Rule:
    """The rule, its priority, backend, route and patterns parsed (a mistake said at its key)."""
    key = "min_priority"
    try:
        min_priority = Priority.parse(table["min_priority"]) if "min_priority" in table else None
        key = "backend"
        backend = _rule_backend(table)
        key = "route"
        route = Route.parse(table["route"])
        key = "match"
        return Rule(patterns, route, name, addressed, min_priority, backend)
    except PolicyError as exc:
        raise site.error(exc.reason, key) from None
    except MessageError as exc:
        raise site.error(str(exc), key) from None


def _rule_backend(table: Mapping[str, Any]) -> Any:
    """A rule's ``backend``, checked; None when it names none."""
    backend = table.get("backend")
    if backend is not None:
        _check_backend(backend)
    return backend


def _line_from_message(message: str) -> int | None:
    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else None


def _table_lines(text: str, header: str) -> list[int]:
    """The line (1-based) of every ``[[header]]`` in ``text``, in order: one pass over the text, so
    that a policy of thousands of rules loads in linear time."""
    pattern = re.compile(
        r"^[ \t]*\[\[[ \t]*" + re.escape(header).replace(r"\.", r"[ \t]*\.[ \t]*") + r"[ \t]*\]\]", re.M
    )
    lines: list[int] = []
    line, pos = 1, 0
    for found in pattern.finditer(text):
        line += text.count("\n", pos, found.start())
        pos = found.start()
        lines.append(line)
    return lines


def _key_line_between(text: str, key: str, first: int, end: int | None) -> int | None:
    """The line of ``key = `` between line ``first`` and line ``end`` (excluded; None: the end)."""
    lines = text.split("\n")
    stop = len(lines) if end is None else min(end - 1, len(lines))
    pattern = re.compile(r"[ \t]*" + re.escape(key) + r"[ \t]*=")
    for number in range(first, stop + 1):
        if pattern.match(lines[number - 1]):
            return number
    return None


def _key_line(text: str, key: str) -> int | None:
    m = re.search(r"^[ \t]*" + re.escape(key) + r"[ \t]*=", text, re.M)
    return text.count("\n", 0, m.start()) + 1 if m else None


def _deepest_line(text: str) -> int:
    """The line where brackets and braces first nest deepest (where a too-deep file goes wrong)."""
    best = 0
    best_line = 1
    for line, depth in _opening_depths(text):
        if depth > best:
            best, best_line = depth, line
    return best_line


def _opening_depths(text: str) -> Iterator[tuple[int, int]]:
    """The line of every opening bracket or brace in ``text``, and the depth it opens."""
    depth = 0
    line = 1
    for ch in text:
        if ch == "\n":
            line += 1
        elif ch in "[{":
            depth += 1
            yield line, depth
        elif ch in "]}":
            depth -= 1
