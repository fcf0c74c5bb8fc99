"""The crowd text world: prompts, every response style, annotator utilities, prompt splits, SFT data.

Why a procedural world: it gives end-to-end runs on a CPU a ground truth. Every response is built
from a small closed vocabulary and its attributes (refused, length, tone, format) can be read back
exactly (see ``judges``), so task reward and safety cost of any generated text are measured, not
estimated. Annotator utilities follow the paper's decomposition r = r_user(z) + r_share, with
r_share = −K for complying with a hazardous request (shared by every archetype, never labelled).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from .config import FORMATS, TONES, Archetype, WorldConfig
from .loader import load_world_config

__all__ = ["Prompt", "ResponseSpec", "TextWorld", "default_world", "normalize"]


def normalize(text: str) -> str:
    """Lowercase and collapse whitespace (keeps newlines out); the canonical form of a prompt."""
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class Prompt:
    """One request: ``template_index`` is -1 when recognised from its topic only (unseen template)."""

    text: str
    topic_index: int
    template_index: int
    noun: str
    hazardous: bool


@dataclass(frozen=True)
class ResponseSpec:
    """The attributes of a response: compliance and the three style axes."""

    refused: bool
    length: int  # number of content sentences
    tone: str  # "formal" | "casual"
    format: str  # "prose" | "bulleted"

    def is_unsafe(self, hazardous: bool) -> bool:
        """Complying with a hazardous request is the only unsafe behaviour."""
        return hazardous and not self.refused


class TextWorld:
    """A world built from a :class:`WorldConfig`; cheap to construct, immutable in use."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        self.style = config.style
        self.prompts: list[Prompt] = [
            Prompt(normalize(tpl.replace("{task}", topic.task)), ti, pi, topic.noun, topic.hazardous)
            for ti, topic in enumerate(config.topics)
            for pi, tpl in enumerate(config.templates)
        ]
        self._by_text = {p.text: p for p in self.prompts}
        if len(self._by_text) != len(self.prompts):
            raise ValueError("templates x topics produce duplicate prompt texts; make them distinct")

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, **overrides: object) -> TextWorld:
        """Load a world config file (None = packaged default); ``overrides`` use dotted keys."""
        return cls(load_world_config(path, overrides))

    # ------------------------------------------------------------------ prompts
    @property
    def archetypes(self) -> list[Archetype]:
        return list(self.config.preferences.archetypes)

    def archetype(self, name: str) -> Archetype:
        return self.config.preferences.archetype(name)

    @property
    def hazardous_fraction(self) -> float:
        return sum(p.hazardous for p in self.prompts) / len(self.prompts)

    def lookup_prompt(self, text: str | Sequence[dict]) -> Prompt | None:
        """Recognise a prompt given as text (possibly wrapped in a chat template) or as messages.

        Tries the exact prompt, then any known prompt inside the text, then any topic's task phrase
        (so prompts from unseen templates still resolve). Returns None if nothing matches.
        """
        if not isinstance(text, str):
            users = [m.get("content", "") for m in text if isinstance(m, dict) and m.get("role") == "user"]
            text = users[-1] if users else ""
        norm = normalize(text)
        if norm in self._by_text:
            return self._by_text[norm]
        hits = [p for p in self.prompts if p.text in norm]
        if hits:
            return max(hits, key=lambda p: (norm.rfind(p.text), len(p.text)))
        padded = f" {norm} "
        found = [(padded.rfind(f" {t.task} "), ti) for ti, t in enumerate(self.config.topics)]
        pos, ti = max(found)
        if pos < 0:
            return None
        topic = self.config.topics[ti]
        return Prompt(norm, ti, -1, topic.noun, topic.hazardous)

    def split_prompts(
        self, eval_fraction: float | None = None, seed: int | None = None
    ) -> tuple[list[Prompt], list[Prompt]]:
        """Disjoint (train, eval) prompts, stratified by hazard so both keep the hazardous fraction.

        Deterministic given the seed (defaults: the crowd's ``eval_prompt_fraction`` and world seed).
        """
        frac = self.config.crowd.eval_prompt_fraction if eval_fraction is None else eval_fraction
        if not 0 <= frac < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {frac}")
        rng = random.Random(f"split:{self.config.seed if seed is None else seed}")
        train: list[Prompt] = []
        evals: list[Prompt] = []
        for hazardous in (False, True):
            stratum = [p for p in self.prompts if p.hazardous == hazardous]
            rng.shuffle(stratum)
            n_eval = round(frac * len(stratum))
            if frac > 0 and len(stratum) > 1:
                n_eval = min(max(n_eval, 1), len(stratum) - 1)
            evals += stratum[:n_eval]
            train += stratum[n_eval:]
        key = self.prompts.index
        return sorted(train, key=key), sorted(evals, key=key)

    # ---------------------------------------------------------------- responses
    @cached_property
    def specs(self) -> list[ResponseSpec]:
        """Every behaviour: {comply, refuse} x {brief, detailed} x tones x formats (16 by default)."""
        lengths = (self.style.brief_sentences, self.style.detailed_sentences)
        return [
            ResponseSpec(refused, n, tone, fmt)
            for refused in (False, True)
            for n in lengths
            for tone in TONES
            for fmt in FORMATS
        ]

    def render(self, prompt: Prompt, spec: ResponseSpec) -> str:
        """The canonical text of a response with attributes ``spec`` to ``prompt``."""
        kind = "refuse" if spec.refused else "comply"
        pool = self.style.reasons if spec.refused else self.style.steps
        if not 1 <= spec.length <= len(pool):
            raise ValueError(f"length must be in [1, {len(pool)}], got {spec.length}")
        body = [s.replace("{noun}", prompt.noun) for s in pool[: spec.length]]
        opener, closer = self.style.openers[kind][spec.tone], self.style.closers[kind][spec.tone]
        if spec.format == "prose":
            return " ".join([opener, *body, closer])
        return "\n".join([opener, *(f"{self.style.bullet} {s}" for s in body), closer])

    def detail(self, length: int) -> float:
        """Length as a feature in [0, 1]: 0 = brief, 1 = detailed (clipped)."""
        lo, hi = self.style.brief_sentences, self.style.detailed_sentences
        return min(1.0, max(0.0, (length - lo) / (hi - lo)))

    def style_features(self, spec: ResponseSpec) -> dict[str, float]:
        """Features in [-1, 1] per axis: + = detailed / formal / bulleted."""
        return {
            "length": 2.0 * self.detail(spec.length) - 1.0,
            "tone": 1.0 if spec.tone == "formal" else -1.0,
            "format": 1.0 if spec.format == "bulleted" else -1.0,
        }

    def utility(self, archetype: Archetype | str, hazardous: bool, spec: ResponseSpec) -> float:
        """u(response, z) = style(z) + bonus·[complied, benign] − K·[complied, hazardous]."""
        a = self.archetype(archetype) if isinstance(archetype, str) else archetype
        prefs = self.config.preferences
        f = self.style_features(spec)
        u = a.length * f["length"] + a.tone * f["tone"] + a.format * f["format"]
        if not spec.refused:
            u += -prefs.safety_penalty if hazardous else prefs.benign_comply_bonus
        return u

    def favourite(self, archetype: Archetype | str, hazardous: bool = False) -> ResponseSpec:
        """The archetype's noiseless best response among all behaviours."""
        return max(self.specs, key=lambda s: self.utility(archetype, hazardous, s))

    def min_utility(self, archetype: Archetype | str) -> float:
        """The lowest utility any well-formed response can get (malformed text scores below it)."""
        return min(self.utility(archetype, h, s) for h in (False, True) for s in self.specs)

    # ----------------------------------------------------------------- SFT data
    def sft_examples(self, prompts: Iterable[Prompt] | None = None) -> Iterator[tuple[str, str]]:
        """(prompt, response) for every behaviour on every prompt: the base LM must be able to
        produce all of them — refusal and compliance, every style — before skills choose among them."""
        for p in self.prompts if prompts is None else prompts:
            for spec in self.specs:
                yield p.text, self.render(p, spec)

    def vocabulary(self) -> set[str]:
        """Distinct whitespace-separated words over all prompts and all responses (plus newline-free)."""
        words: set[str] = set()
        for prompt, response in self.sft_examples():
            words.update(prompt.split())
            words.update(response.split())
        return words


@lru_cache(maxsize=1)
def default_world() -> TextWorld:
    """The packaged default world (cached); what dotted-name task rewards use."""
    return TextWorld(load_world_config(None))
