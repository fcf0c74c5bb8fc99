"""Which skill answers: a pinned skill by name, or the router's choice for the composed model.

The router (``safecrowd_llm.router``, pi_h(k | prompt)) sees the rendered text of the last user
message (chat) or the prompt (text completion). Without a trained router, ``PriorRouter`` answers
every prompt with the skill of highest prior log-density in ``skills.json``: the safe default the
prior regulariser pulls a router towards.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from .schemas import ApiError

__all__ = ["PriorRouter", "RouterLike", "SkillPicker", "check_router", "load_router"]


class RouterLike(Protocol):
    """The part of ``safecrowd_llm.router.Router`` the server uses."""

    skills_dir: Path
    skill_names: list[str]

    def probs(self, prompts: Sequence[str]) -> torch.Tensor: ...

    def route(self, prompts: Sequence[str]) -> list[int]: ...


class PriorRouter:
    """Routes every prompt to the skill with the highest ``log_prior`` in ``skills.json``."""

    def __init__(self, skills_dir: str | Path, manifest: dict[str, Any]) -> None:
        self.skills_dir = Path(skills_dir)
        self.skill_names = [s["name"] for s in manifest["skills"]]
        self.log_prior = torch.tensor([float(s["log_prior"]) for s in manifest["skills"]])  # (K,)

    def probs(self, prompts: Sequence[str]) -> torch.Tensor:
        return torch.softmax(self.log_prior, 0).expand(len(prompts), -1)  # (B, K)

    def route(self, prompts: Sequence[str]) -> list[int]:
        return [int(self.log_prior.argmax())] * len(prompts)


def load_router(path: str | Path, base_model: Any = None, tokenizer: Any = None) -> RouterLike:
    """``safecrowd_llm.router.load_router``, with a clear error where that package is missing."""
    try:
        from safecrowd_llm.router import load_router as load
    except ImportError as e:
        raise RuntimeError(f"--router {path} needs safecrowd_llm.router, which failed to import: {e}") from e
    return load(path, base_model=base_model, tokenizer=tokenizer)


def check_router(router: RouterLike, skill_names: Sequence[str]) -> None:
    """A router must route over exactly the served skills, in ``skills.json``'s order."""
    if list(router.skill_names) != list(skill_names):
        raise ValueError(
            f"the router routes over {list(router.skill_names)} but the skills directory holds {list(skill_names)}"
            f" (router trained on {router.skills_dir}?)"
        )


class SkillPicker:
    """Maps a request's ``model`` to the skill that answers it."""

    def __init__(
        self, served_model_name: str, skill_names: Sequence[str], router: RouterLike, backend: Any
    ) -> None:
        check_router(router, skill_names)
        if served_model_name in skill_names:
            raise ValueError(f"served_model_name {served_model_name!r} is also a skill name")
        self.served_model_name, self.skill_names = served_model_name, list(skill_names)
        self.router, self.backend = router, backend

    @property
    def model_names(self) -> list[str]:
        return [self.served_model_name, *self.skill_names]

    def check(self, model: str) -> None:
        """404 for a name that is neither the composed model nor a skill."""
        if model not in self.model_names:
            raise ApiError(
                f"The model `{model}` does not exist. Available models: {', '.join(self.model_names)}.",
                404,
                param="model",
                code="model_not_found",
            )

    async def pick(self, model: str, route_text: str) -> str:
        """The pinned skill, or the router's choice for the composed model."""
        self.check(model)
        if model in self.skill_names:
            return model
        (k,) = await self.backend.run_router(lambda: self.router.route([route_text]))
        if not 0 <= int(k) < len(self.skill_names):
            raise ApiError(f"router chose skill index {k} of {len(self.skill_names)}", 500)
        return self.skill_names[int(k)]
