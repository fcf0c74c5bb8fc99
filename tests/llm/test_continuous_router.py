"""The continuous-latent router: REINFORCE on task reward + beta_reg log p(z'); the prior alone (a
constant task reward) shrinks pi_h towards the prior mode, and nothing moves without it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl", reason="needs the llm extra: pip install -e '.[llm]'")

from safecrowd_llm.evaluate_methods import MethodSpec, evaluate_methods
from safecrowd_llm.router import (
    ContinuousRouterArguments,
    load_continuous_router,
    load_router,
    train_continuous_router,
)
from safecrowd_llm.textworld import TextWorld

WORLD = TextWorld.from_yaml()


def constant_reward(prompt, completion) -> float:
    return 0.5


@pytest.fixture(scope="module")
def latent_model(tiny_skills, tmp_path_factory):
    """A latent-LoRA model (untrained, latent LoRA B made non-zero) over the tiny base, saved as a run's latent_model/."""
    from transformers import AutoModelForCausalLM

    from safecrowd_llm.trainers import LatentSkillModel, SafeCPLConfig

    out = tmp_path_factory.mktemp("latent") / "latent_model"
    base = str(tiny_skills / "base")
    args = SafeCPLConfig(output_dir=str(out), use_cpu=True, latent_dim=2, encoder_hidden_dim=8, lora_r=2, report_to="none")
    model = LatentSkillModel.build(AutoModelForCausalLM.from_pretrained(base), args, feature_dim=32,
                                   base_model_name_or_path=base, kind="safe-cpl")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(out)
    return out


def _args(latent_model, out, **kw) -> ContinuousRouterArguments:
    kw = {"iterations": 30, "prompts_per_iteration": 8, "max_new_tokens": 4, "learning_rate": 5e-2,
          "task_reward": f"{__name__}.constant_reward"} | kw
    return ContinuousRouterArguments(latent_model=str(latent_model), output_dir=str(out), **kw)


def test_prior_regulariser_alone_shrinks_the_latent_policy(latent_model, tmp_path):
    with_prior = train_continuous_router(_args(latent_model, tmp_path / "a", beta_reg=1.0))["history"]
    without = train_continuous_router(_args(latent_model, tmp_path / "b", beta_reg=0.0))["history"]
    assert with_prior[-1]["std"] < 0.8 * with_prior[0]["std"]  # pulled towards the prior mode
    assert without[-1]["std"] == pytest.approx(without[0]["std"])  # constant reward: zero advantage, no update


def test_continuous_router_round_trips_and_joins_the_comparison(latent_model, tiny_skills, tmp_path):
    train_continuous_router(_args(latent_model, tmp_path / "r", iterations=2))
    router = load_continuous_router(tmp_path / "r")
    prompts = [p.text for p in WORLD.split_prompts()[1][:3]]
    assert router.latents(prompts).shape == (3, 2)
    assert len(router.generate(prompts, max_new_tokens=4, temperature=0)) == 3
    with pytest.raises(ValueError, match="continuous-latent router"):
        load_router(tmp_path / "r")
    results = evaluate_methods(
        [MethodSpec("ours-continuous", "router", str(tmp_path / "r"))], base_model=str(tiny_skills / "base"),
        task_reward="safecrowd_llm.textworld.judges.helpfulness", prompts=WORLD.split_prompts()[1][:3],
        out_dir=tmp_path / "eval", world=WORLD, samples_per_prompt=1, max_new_tokens=4,
    )
    assert results["summary"]["ours-continuous"]["samples"] == 3
