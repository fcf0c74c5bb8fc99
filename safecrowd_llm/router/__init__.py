"""The high-level policy for language models: a router over exported skill adapters."""

from .compose import generate_routed
from .continuous import ContinuousRouterArguments, load_continuous_router, train_continuous_router
from .model import ROUTER_CONFIG, ROUTER_WEIGHTS, Router, RouterHead, RouterSpec, load_router, save_router
from .train import RouterArguments, load_prompts, score_skills, train_router

__all__ = [
    "ROUTER_CONFIG",
    "ROUTER_WEIGHTS",
    "ContinuousRouterArguments",
    "Router",
    "RouterArguments",
    "RouterHead",
    "RouterSpec",
    "generate_routed",
    "load_continuous_router",
    "load_prompts",
    "load_router",
    "save_router",
    "score_skills",
    "train_continuous_router",
    "train_router",
]
