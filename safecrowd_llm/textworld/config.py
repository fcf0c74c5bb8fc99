"""The crowd text world's configuration: typed dataclasses that validate themselves, loaded from YAML.

Why dataclasses that check themselves: every other tool (the crowd generator, the judges, the
recipes) trusts these fields, so a bad value must fail at load time with a message that names the
field (``crowd.flip_prob``) and, when loaded from a file, the file — not deep inside a training run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Archetype",
    "ConfigError",
    "CrowdConfig",
    "PreferenceConfig",
    "StyleConfig",
    "Topic",
    "WorldConfig",
]

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.yaml")
TONES = ("formal", "casual")
FORMATS = ("prose", "bulleted")
KINDS = ("comply", "refuse")
STYLE_AXES = ("length", "tone", "format")


class ConfigError(ValueError):
    """A bad configuration value; ``field`` is the dotted path of the offending field."""

    def __init__(self, field_path: str, message: str, source: str | None = None) -> None:
        where = f"{source}: field '{field_path}'" if source else field_path
        super().__init__(f"{where}: {message}")
        self.field = field_path
        self.reason = message
        self.source = source


def _words(sentence: str) -> list[str]:
    return sentence.split()


def _check_sentence(path: str, sentence: Any, terminals: tuple[str, ...] = (".", "!", "?")) -> None:
    """A surface sentence: lowercase words separated by spaces, one terminal token, at the end only."""
    if not isinstance(sentence, str) or not sentence.strip():
        raise ConfigError(path, f"must be a non-empty string, got {sentence!r}")
    words = _words(sentence)
    if sentence != " ".join(words) or sentence != sentence.lower():
        raise ConfigError(path, f"must be lowercase words separated by single spaces, got {sentence!r}")
    if words[-1] not in terminals or any(w in terminals for w in words[:-1]):
        raise ConfigError(path, f"must be one sentence ending in one of {terminals}, got {sentence!r}")


def _number(path: str, v: Any, what: str = "a finite number", ok: Any = None) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or (ok and not ok(v)):
        raise ConfigError(path, f"must be {what}, got {v!r}")


def _positive_int(path: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(path, f"must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class Topic:
    """A request topic: ``task`` fills a template's ``{task}``; ``noun`` is the word answers mention."""

    task: str
    noun: str
    hazardous: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task.strip() or self.task != self.task.lower():
            raise ConfigError("task", f"must be a non-empty lowercase phrase, got {self.task!r}")
        if not isinstance(self.noun, str) or len(_words(self.noun)) != 1 or self.noun != self.noun.lower():
            raise ConfigError("noun", f"must be one lowercase word, got {self.noun!r}")
        if not isinstance(self.hazardous, bool):
            raise ConfigError("hazardous", f"must be true or false, got {self.hazardous!r}")


@dataclass(frozen=True)
class StyleConfig:
    """Surface forms of responses: openers/closers by kind and tone, content sentences, bullet marker.

    A response is ``opener + content sentences + closer``; prose puts them on one line, bulleted puts
    each content sentence on its own line after ``bullet``. Compliance content = the first ``length``
    of ``steps`` (each mentions the topic's noun through ``{noun}``); refusal content = the first
    ``length`` of ``reasons``. Every sentence is distinct so that a parser can read attributes back.
    """

    openers: dict[str, dict[str, str]]
    closers: dict[str, dict[str, str]]
    steps: list[str]
    reasons: list[str]
    brief_sentences: int = 2
    detailed_sentences: int = 4
    bullet: str = "-"

    def __post_init__(self) -> None:
        for name in ("openers", "closers"):
            table = getattr(self, name)
            if not isinstance(table, Mapping) or set(table) != set(KINDS):
                raise ConfigError(name, f"must map exactly {KINDS} to tone tables, got {table!r}")
            for kind in KINDS:
                if not isinstance(table[kind], Mapping) or set(table[kind]) != set(TONES):
                    raise ConfigError(f"{name}.{kind}", f"must map exactly {TONES} to sentences")
                for tone in TONES:
                    _check_sentence(f"{name}.{kind}.{tone}", table[kind][tone])
        for name, slot in (("steps", 1), ("reasons", 0)):
            items = getattr(self, name)
            if not isinstance(items, list) or len(items) < 1:
                raise ConfigError(name, "must be a non-empty list of sentences")
            for i, s in enumerate(items):
                _check_sentence(f"{name}[{i}]", s.replace("{noun}", "x") if isinstance(s, str) else s)
                if s.count("{noun}") != slot or (slot and "{noun}" not in _words(s)):
                    raise ConfigError(
                        f"{name}[{i}]", f"must contain '{{noun}}' as a word exactly {slot} time(s)"
                    )
                if "{" in s.replace("{noun}", "") or "}" in s.replace("{noun}", ""):
                    raise ConfigError(f"{name}[{i}]", "only the '{noun}' placeholder is allowed")
        if (
            not isinstance(self.bullet, str)
            or len(_words(self.bullet)) != 1
            or self.bullet != self.bullet.strip()
        ):
            raise ConfigError("bullet", f"must be a single token such as '-', got {self.bullet!r}")
        for name in ("brief_sentences", "detailed_sentences"):
            _positive_int(name, getattr(self, name))
        if self.brief_sentences >= self.detailed_sentences:
            raise ConfigError("brief_sentences", f"must be < detailed_sentences ({self.detailed_sentences})")
        for name in ("steps", "reasons"):
            if len(getattr(self, name)) < self.detailed_sentences:
                raise ConfigError(
                    name, f"needs at least detailed_sentences={self.detailed_sentences} entries"
                )
        frame = [t[k][tone] for t in (self.openers, self.closers) for k in KINDS for tone in TONES]
        content = list(self.steps) + list(self.reasons)
        if len(set(frame + content)) != len(frame) + len(content):
            raise ConfigError("openers", "openers, closers, steps and reasons must all be distinct sentences")
        if any(s.split()[0] == self.bullet for s in frame + content):
            raise ConfigError("bullet", f"no sentence may start with the bullet marker {self.bullet!r}")


@dataclass(frozen=True)
class Archetype:
    """An annotator type: style weights on features in [-1, 1] (+ = detailed / formal / bulleted)."""

    name: str
    length: float = 0.0
    tone: float = 0.0
    format: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError("name", f"must be an identifier-like name, got {self.name!r}")
        for axis in STYLE_AXES:
            _number(axis, getattr(self, axis))

    @property
    def style_scale(self) -> float:
        """The largest |style utility| this archetype can give (sum of |weights|)."""
        return sum(abs(getattr(self, a)) for a in STYLE_AXES)


@dataclass(frozen=True)
class PreferenceConfig:
    """Utilities: style + ``benign_comply_bonus`` for complying with a benign request, −K
    (``safety_penalty``) for complying with a hazardous one — the shared principle of every archetype."""

    archetypes: list[Archetype]
    safety_penalty: float = 6.0
    benign_comply_bonus: float = 2.0

    def __post_init__(self) -> None:
        if not self.archetypes:
            raise ConfigError("archetypes", "needs at least one archetype")
        names = [a.name for a in self.archetypes]
        if len(set(names)) != len(names):
            raise ConfigError("archetypes", f"names must be unique, got {names}")
        _number(
            "safety_penalty", self.safety_penalty, "a number > 0 (the shared principle K)", lambda v: v > 0
        )
        _number("benign_comply_bonus", self.benign_comply_bonus, "a number >= 0", lambda v: v >= 0)

    def archetype(self, name: str) -> Archetype:
        for a in self.archetypes:
            if a.name == name:
                return a
        raise KeyError(f"unknown archetype {name!r}; known: {[a.name for a in self.archetypes]}")


@dataclass(frozen=True)
class CrowdConfig:
    """How the crowd is sampled: size, archetype proportions, pairs each, Bradley–Terry noise."""

    num_annotators: int = 256
    proportions: dict[str, float] = field(default_factory=dict)  # empty = balanced
    pairs_per_annotator: int = 32
    temperature: float = 0.5  # BT temperature; 0 = noiseless argmax labels
    flip_prob: float = 0.0  # after BT, each label flips with this probability
    eval_prompt_fraction: float = 0.2  # prompts held out from the crowd (and from routers) for eval
    conversational: bool = False  # rows as message lists instead of plain strings

    def __post_init__(self) -> None:
        _positive_int("num_annotators", self.num_annotators)
        _positive_int("pairs_per_annotator", self.pairs_per_annotator)
        if not isinstance(self.proportions, Mapping):
            raise ConfigError("proportions", f"must map archetype names to weights, got {self.proportions!r}")
        for k, v in self.proportions.items():
            _number(f"proportions.{k}", v, "a number >= 0", lambda x: x >= 0)
        if self.proportions and sum(self.proportions.values()) <= 0:
            raise ConfigError("proportions", "weights must not all be zero")
        _number("temperature", self.temperature, "a number >= 0", lambda v: v >= 0)
        _number("flip_prob", self.flip_prob, "a number in [0, 0.5]", lambda v: 0 <= v <= 0.5)
        _number("eval_prompt_fraction", self.eval_prompt_fraction, "a number in [0, 1)", lambda v: 0 <= v < 1)
        if not isinstance(self.conversational, bool):
            raise ConfigError("conversational", f"must be true or false, got {self.conversational!r}")


@dataclass(frozen=True)
class WorldConfig:
    """The whole world: prompt templates x topics, response style, annotator preferences, crowd."""

    templates: list[str]
    topics: list[Topic]
    style: StyleConfig
    preferences: PreferenceConfig
    crowd: CrowdConfig = field(default_factory=CrowdConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.templates, list) or not self.templates:
            raise ConfigError("templates", "must be a non-empty list of strings containing '{task}'")
        for i, t in enumerate(self.templates):
            if not isinstance(t, str) or t.count("{task}") != 1 or t != t.lower():
                raise ConfigError(
                    f"templates[{i}]", f"must be lowercase with '{{task}}' exactly once, got {t!r}"
                )
            if "{" in t.replace("{task}", "") or "}" in t.replace("{task}", ""):
                raise ConfigError(f"templates[{i}]", "only the '{task}' placeholder is allowed")
        if len(set(self.templates)) != len(self.templates):
            raise ConfigError("templates", "must be distinct")
        if not isinstance(self.topics, list) or len(self.topics) < 2:
            raise ConfigError("topics", "needs at least two topics")
        nouns = [t.noun for t in self.topics]
        if len(set(nouns)) != len(nouns):
            dup = sorted({n for n in nouns if nouns.count(n) > 1})
            raise ConfigError(
                "topics", f"nouns must be unique (the judges identify topics by them); repeated: {dup}"
            )
        if len({t.task for t in self.topics}) != len(self.topics):
            raise ConfigError("topics", "tasks must be unique")
        if not any(t.hazardous for t in self.topics) or all(t.hazardous for t in self.topics):
            raise ConfigError("topics", "needs at least one hazardous and one benign topic")
        names = {a.name for a in self.preferences.archetypes}
        unknown = sorted(set(self.crowd.proportions) - names)
        if unknown:
            raise ConfigError(f"crowd.proportions.{unknown[0]}", f"unknown archetype; known: {sorted(names)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError("seed", f"must be an integer, got {self.seed!r}")

    @property
    def proportions(self) -> dict[str, float]:
        """Archetype weights, balanced when the crowd section gives none (missing names get 0)."""
        names = [a.name for a in self.preferences.archetypes]
        if not self.crowd.proportions:
            return dict.fromkeys(names, 1.0)
        return {n: float(self.crowd.proportions.get(n, 0.0)) for n in names}

    def to_dict(self) -> dict[str, Any]:
        """Plain data that ``from_dict`` (and the YAML loader) accepts: round-trips exactly."""
        d = asdict(self)
        d["preferences"]["archetypes"] = {
            a.pop("name"): a for a in (dict(x) for x in d["preferences"]["archetypes"])
        }
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorldConfig:
        """Build from plain data (parsed YAML); errors name the dotted field path."""
        from .loader import world_config_from_dict  # the loader builds on this module

        return world_config_from_dict(data)
