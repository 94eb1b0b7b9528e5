"""Scripted replies and injected faults: the emulator as a test double (docs/testing.md).

A rules file (TOML or JSON, ``emulator.rules``) lists rules in order; the first whose ``match``
fits a request decides its ``reply`` (text, reasoning, finish reason, usage, speech, pacing)
and its ``fault`` (an error before the first byte or after N chunks, a stall, a dropped
connection, a truncated last chunk, a slow trickle). A request no rule matches gets the
emulator's own answer. The file is read again when it changes; a file that no longer parses
keeps the rules before it, and says so in the log.

A request may also name a scenario (``X-Omniserve-Scenario``, matched by ``match.scenario``)
and carry a fault of its own (``X-Omniserve-Fault: error=limit_requests; retry_after=2``),
which wins over a rule's. Both headers are honoured by the emulator only.

Matching runs where the request is parsed, on a worker thread: a regex over the last user
message grows with the input. Rules are kept in buckets by scenario and model, so a request
only walks the rules that could fit it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from omniserve.config import validation_problems
from omniserve.errors import InvalidParameter, StartupError, VendorError
from omniserve.job import TOKEN_KINDS, GenerationJob

log = logging.getLogger("omniserve.scenarios")

SCENARIO_HEADER = "x-omniserve-scenario"
FAULT_HEADER = "x-omniserve-fault"

InputKind = Literal["text", "image", "audio", "video"]

# The vendor's errors a fault may answer with: code -> (status, type, message). Messages are
# the vendor's where the vendor's are known (REFERENCE §2).
ERRORS: dict[str, tuple[int, str, str]] = {
    "invalid_parameter_error": (
        400,
        "invalid_request_error",
        "<400> InternalError.Algo.InvalidParameter: The provided URL does not appear to be "
        "valid. Ensure it is correctly formatted.",
    ),
    "data_inspection_failed": (
        400,
        "data_inspection_failed",
        "Input data may contain inappropriate content.",
    ),
    "Arrearage": (
        400,
        "Arrearage",
        "Access denied, please make sure your account is in good standing.",
    ),
    "invalid_api_key": (
        401,
        "invalid_request_error",
        "Incorrect API key provided. For details, see: "
        "https://help.aliyun.com/zh/model-studio/error-code#apikey-error",
    ),
    "AllocationQuota.FreeTierOnly": (
        403,
        "AllocationQuota.FreeTierOnly",
        "The free tier of the model has been exhausted. If you wish to continue access the "
        'model on a paid basis, please disable the "use free tier only" mode in the '
        "management console.",
    ),
    "model_not_found": (
        404,
        "invalid_request_error",
        "The model does not exist or you do not have access to it.",
    ),
    "limit_requests": (
        429,
        "limit_requests",
        "You have exceeded your current request limit. For details, see: "
        "https://help.aliyun.com/zh/model-studio/error-code#rate-limit",
    ),
    "insufficient_quota": (
        429,
        "insufficient_quota",
        "Allocated quota exceeded, please increase your quota limit.",
    ),
    "limit_burst_rate": (
        429,
        "limit_burst_rate",
        "Request rate increased too quickly. To ensure system stability, please adjust your "
        "client logic to scale requests more smoothly over time.",
    ),
    "InternalError": (
        500,
        "internal_error",
        "An internal error has occured, try again later or contact service support.",
    ),
    "RequestTimeOut": (500, "RequestTimeOut", "Request timed out, please try again later."),
    "ServiceUnavailable": (
        503,
        "ServiceUnavailable",
        "The service is temporarily unavailable, please try again later.",
    ),
}
# What the vendor's stream says when its output is moderated mid-answer.
_MID_STREAM_MESSAGES = {"data_inspection_failed": "Output data may contain inappropriate content."}


class InjectedError(VendorError):
    """An error a rule or the fault header asked for."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    """What a request must have for the rule to apply; every field given must fit."""

    scenario: str | None = None  # the X-Omniserve-Scenario header
    model: str | list[str] | None = None
    message: str | None = None  # a substring of the last user message's text
    message_regex: str | None = None  # re.search over the same text
    input: InputKind | None = None  # the last user message's media, "text" for none
    voice: str | None = None  # the voice asked for ("none": text only)
    thinking: bool | None = None

    @model_validator(mode="after")
    def _regex_compiles(self) -> Match:
        if self.message_regex is not None:
            try:
                re.compile(self.message_regex)
            except re.error as exc:
                raise ValueError(f"message_regex {self.message_regex!r}: {exc}") from None
        return self


class Reply(_Strict):
    """What the answer is, in place of the emulator's."""

    text: str | None = None
    reasoning: str | None = None  # sent when thinking is on
    finish_reason: Literal["stop", "length"] | None = None
    # Token counts to report instead of the counted ones, by kind (prompt_text, …).
    usage: dict[str, int] | None = None
    speech: bool | None = None  # false: no audio, even when the request asked for it
    first_token_ms: float | None = Field(default=None, ge=0)
    tokens_per_second: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _usage_kinds(self) -> Reply:
        for kind, n in (self.usage or {}).items():
            if kind not in TOKEN_KINDS:
                raise ValueError(f"usage: {kind!r} is not one of {', '.join(TOKEN_KINDS)}")
            if n < 0:
                raise ValueError(f"usage: {kind} must be 0 or more")
        return self


class Fault(_Strict):
    """What goes wrong. ``after_chunks`` counts the SSE events sent before the fault (the
    role chunk is the first): an error at 0 is an HTTP error, later an error event."""

    error: str | None = None  # a code of ``ERRORS``
    status: int | None = Field(default=None, ge=400, le=599)
    message: str | None = None
    retry_after: float | None = Field(default=None, ge=0)
    after_chunks: int = Field(default=0, ge=0)
    stall_s: float | None = Field(default=None, gt=0, le=3600)  # before chunk after_chunks
    drop_after_chunks: int | None = Field(default=None, ge=0)
    truncate: bool = False  # the last event cut in half, then the connection dropped
    trickle_bytes: int | None = Field(default=None, ge=1)
    trickle_ms: float = Field(default=20.0, ge=0, le=60_000)

    @model_validator(mode="after")
    def _one_fault(self) -> Fault:
        if self.error is not None and self.error not in ERRORS:
            raise ValueError(f"error {self.error!r} is not one of {', '.join(ERRORS)}")
        given = [
            self.error is not None,
            self.stall_s is not None,
            self.drop_after_chunks is not None,
            self.truncate,
            self.trickle_bytes is not None,
        ]
        if sum(given) != 1:
            raise ValueError(
                "a fault is one of error, stall_s, drop_after_chunks, truncate or trickle_bytes"
            )
        return self

    @property
    def kind(self) -> str:
        """The fault's name in the metrics and the request log."""
        if self.error is not None:
            return "error" if self.after_chunks == 0 else "error_mid_stream"
        if self.stall_s is not None:
            return "stall"
        if self.drop_after_chunks is not None:
            return "drop"
        return "truncate" if self.truncate else "trickle"

    def api_error(self, *, mid_stream: bool) -> InjectedError:
        assert self.error is not None
        status, type_, message = ERRORS[self.error]
        if mid_stream:
            message = _MID_STREAM_MESSAGES.get(self.error, message)
        retry_after = self.retry_after
        if retry_after is None and status == 429:
            retry_after = 1.0  # every 429 of omniserve carries Retry-After
        return InjectedError(
            self.message or message,
            status=self.status or status,
            code=self.error,
            type=type_,
            retry_after=retry_after,
        )


class Rule(_Strict):
    name: str | None = None
    match: Match = Field(default_factory=Match)
    reply: Reply | None = None
    fault: Fault | None = None


class RulesFile(_Strict):
    rules: list[Rule] = Field(default_factory=list)


@dataclass(frozen=True)
class Script:
    """What a request was given: by which rule (its name or number), and whether from the
    fault header."""

    rule: str | None = None
    reply: Reply | None = None
    fault: Fault | None = None


def _compile(index: int, rule: Rule) -> _Compiled:
    model = rule.match.model
    models = None if model is None else frozenset([model] if isinstance(model, str) else model)
    regex = rule.match.message_regex
    return _Compiled(index, rule, models, re.compile(regex) if regex else None)


@dataclass
class _Compiled:
    index: int
    rule: Rule
    models: frozenset[str] | None
    regex: re.Pattern[str] | None

    @property
    def label(self) -> str:
        return self.rule.name or f"#{self.index + 1}"

    def fits(self, text: str, inputs: str, voice: str, thinking: bool) -> bool:
        m = self.rule.match
        return (
            (m.input is None or m.input == inputs)
            and (m.voice is None or m.voice == voice)
            and (m.thinking is None or m.thinking == thinking)
            and (m.message is None or m.message in text)
            and (self.regex is None or self.regex.search(text) is not None)
        )


_GRAM = 3  # rules with a substring are indexed by its first characters


class _Bucket:
    """The rules one (scenario, model) leaves, indexed so a request checks few of them: a
    rule with a substring only when the message holds the substring's first three
    characters; the rules with a regex (and no substring) only when one regex of them all
    finds something."""

    def __init__(self, rules: list[_Compiled]) -> None:
        self.rules = rules
        self.by_gram: dict[str, list[int]] = {}
        self.always: list[int] = []  # no substring, no regex (or a regex kept apart)
        self.regexes: list[int] = []  # a regex that joins the combined one
        for position, c in enumerate(rules):
            message = c.rule.match.message
            if message is not None and len(message) >= _GRAM:
                self.by_gram.setdefault(message[:_GRAM], []).append(position)
            elif message is None and c.regex is not None and _joinable(c.regex):
                self.regexes.append(position)
            else:
                self.always.append(position)
        self.combined = (
            re.compile("|".join(f"(?:{rules[p].regex.pattern})" for p in self.regexes))  # type: ignore[union-attr]
            if self.regexes
            else None
        )

    def candidates(self, text: str) -> list[int]:
        """Positions of the rules that may fit ``text``, in file order."""
        found = list(self.always)
        if self.by_gram:
            if len(self.by_gram) < len(text):
                grams: Any = self.by_gram.keys()
                found += [p for g in grams if g in text for p in self.by_gram[g]]
            else:
                seen = {text[i : i + _GRAM] for i in range(len(text) - _GRAM + 1)}
                found += [p for g in seen if g in self.by_gram for p in self.by_gram[g]]
        if self.combined is not None and self.combined.search(text) is not None:
            found += self.regexes
        found.sort()
        return found


def _joinable(regex: re.Pattern[str]) -> bool:
    """Whether ``regex`` can join an alternation and mean the same: no groups (whose numbers
    would shift) and no global flags (allowed only at the start of a pattern)."""
    return regex.groups == 0 and not regex.pattern.startswith("(?")


class RuleSet:
    """Rules in file order, bucketed by (scenario, model) so a request walks only those that
    could fit it."""

    def __init__(self, rules: list[Rule] | None = None) -> None:
        self.rules = list(rules or ())
        self._compiled = [_compile(i, rule) for i, rule in enumerate(self.rules)]
        self._scenarios = {r.match.scenario for r in self.rules if r.match.scenario is not None}
        self._buckets: dict[tuple[str | None, str], _Bucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, scenario: str | None, model: str) -> _Bucket:
        if scenario not in self._scenarios:
            scenario = None  # a scenario no rule names: the rules without one
        key = (scenario, model)
        found = self._buckets.get(key)
        if found is None:
            found = _Bucket(
                [
                    c
                    for c in self._compiled
                    if c.rule.match.scenario in (None, scenario)
                    and (c.models is None or model in c.models)
                ]
            )
            with self._lock:
                if len(self._buckets) > 4096:  # models are the server's: this stays small
                    self._buckets.clear()
                self._buckets[key] = found
        return found

    def find(self, job: GenerationJob, scenario: str | None) -> Script | None:
        """The first rule that fits ``job`` under ``scenario``, as a script."""
        bucket = self._bucket(scenario, job.model_name)
        if not bucket.rules:
            return None
        last = next((m for m in reversed(job.messages) if m.role == "user"), None)
        text = last.text if last else ""
        inputs = next((i.modality for i in last.media), "text") if last else "text"
        voice = job.voice.name if job.voice else "none"
        for position in bucket.candidates(text):
            c = bucket.rules[position]
            if c.fits(text, inputs, voice, job.thinking):
                return Script(rule=c.label, reply=c.rule.reply, fault=c.rule.fault)
        return None


def parse_rules(data: bytes, name: str) -> RuleSet:
    """Rules from a file's bytes (TOML, or JSON for a ``.json`` name); ``ValueError`` says
    what is wrong and where."""
    try:
        text = data.decode()
        raw: Any = json.loads(text) if name.endswith(".json") else tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{name} cannot be read: {exc}") from None
    try:
        return RuleSet(RulesFile.model_validate(raw).rules)
    except ValidationError as exc:
        raise ValueError(f"{name}: {validation_problems(exc, 'rules')}") from None


class RuleBook:
    """The rules of a file, read again when the file changes (its size or time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._rules = RuleSet()
        self._lock = threading.Lock()
        self.error: str | None = None  # why the file's last change was not taken
        try:
            self._reload(self._stat())
        except (OSError, ValueError) as exc:
            raise StartupError(f"emulator.rules: {exc}") from None

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size)

    def _reload(self, stamp: tuple[int, int]) -> None:
        self._rules = parse_rules(self.path.read_bytes(), self.path.name)
        self._stamp = stamp
        self.error = None

    def current(self) -> RuleSet:
        """The rules now: read again if the file changed; a change that does not parse
        (or a file gone) keeps the rules before it."""
        try:
            stamp = self._stat()
        except OSError as exc:
            self._fail(f"{self.path} cannot be read ({exc.strerror}); the rules before it stay")
            return self._rules
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self._reload(stamp)
                        count = len(self._rules.rules)
                        log.info("rules read again from %s: %d rules", self.path, count)
                    except (OSError, ValueError) as exc:
                        self._stamp = stamp  # logged once per change
                        self._fail(f"{exc}; the rules before it stay")
        return self._rules

    def _fail(self, message: str) -> None:
        if message != self.error:
            log.error("emulator.rules: %s", message)
        self.error = message


def parse_fault_header(value: str) -> Fault:
    """``X-Omniserve-Fault``: the fault's fields as ``key=value`` pairs separated by ``;``
    or ``,`` (``error=limit_requests; retry_after=2``, ``drop_after_chunks=3``,
    ``truncate``). ``InvalidParameter`` says what is wrong."""
    fields: dict[str, Any] = {}
    for part in re.split(r"[;,]", value):
        part = part.strip()
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key = key.strip().lower()
        fields[key] = raw.strip() if sep else True
    try:
        return Fault.model_validate(fields)
    except ValidationError as exc:
        raise InvalidParameter(
            f"X-Omniserve-Fault cannot be used: {validation_problems(exc, 'fault')}",
            param="X-Omniserve-Fault",
        ) from None


def script_for(
    rules: RuleSet | None, job: GenerationJob, scenario: str | None, fault: str | None
) -> Script | None:
    """What ``job`` is given: its rule's reply and fault, the header's fault winning."""
    script = rules.find(job, scenario) if rules is not None else None
    if fault is None:
        return script
    injected = parse_fault_header(fault)
    if script is None:
        return Script(rule="X-Omniserve-Fault", fault=injected)
    return Script(rule=script.rule, reply=script.reply, fault=injected)
