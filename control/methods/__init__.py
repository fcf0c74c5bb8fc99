"""The control methods behind one entry point: ``train_method(method, data, crowd, profile, seed, workdir)``.

========== ==========================================================================================
oracle     TD3 online on ``r - K cost`` (true cost)                          (:mod:`.baselines`)
task-only  TD3 online on the env reward ``r``                                (:mod:`.baselines`)
rc         TD3 online on ``(1 - omega) r + omega r_hat``, pooled BT reward    (:mod:`.baselines`)
sopl       TD3 online on ``r - K c_hat``, c_hat from safety preference labels (:mod:`.baselines`)
safe-vpl   VAE + BT latent reward -> TD3+BC (or IQL) skills -> high-level TD3 on ``r`` (:mod:`.skills_vpl`, :mod:`.composition`)
safe-cpl   VAE + CPL latent policy (skills)       -> high-level TD3 on ``r`` (:mod:`.skills_cpl`, :mod:`.composition`)
========== ==========================================================================================

Every stage caches its result in ``workdir`` (safetensors + a JSON sidecar keyed by a config hash):
a rerun with the same inputs loads finished stages, and online TD3 resumes from its last checkpoint.
``workdir/train_log.json`` records stage timings and learning curves. ``skills_dir`` (default: ``workdir``)
holds Safe-VPL/CPL's skills, so runs that differ only in the high level (a ``beta_reg`` sweep, online vs
offline) can share one skill fit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from control.iql import IQLConfig
from control.methods.baselines import (
    RewardModelConfig,
    StepScore,
    default_cost_penalty,
    fit_segment_model,
    match_scale,
    rc_mix,
)
from control.methods.common import (
    ActorPolicy,
    Policy,
    Spaces,
    config_hash,
    crowd_fingerprint,
    data_fingerprint,
    load_checkpoint,
    load_module,
    model_crowd,
    module_tensors,
    save_checkpoint,
    seed_everything,
    segment_features,
)
from control.methods.composition import CompositionConfig, HighLevelTD3, train_offline_high_level
from control.methods.latent import LatentConfig, pick_skills, posterior_means
from control.methods.online import OnlineConfig, relabelled, save_final, train_online
from control.methods.options import OptionsConfig, OptionsPolicy, SkillValues, train_options
from control.methods.skills_cpl import CPLConfig, fit_cpl_skills
from control.methods.skills_vpl import VPLConfig, fit_vpl_reward, train_vpl_skills
from control.td3 import TD3, TD3Config
from safecrowd_llm.core import GaussianMixturePrior
from safecrowd_llm.core.atomic import write_json

__all__ = ["METHODS", "MethodConfig", "Policy", "skill_policies", "train_method"]

METHODS: tuple[str, ...] = ("oracle", "task-only", "rc", "sopl", "safe-vpl", "safe-cpl")


@dataclass(frozen=True)
class MethodConfig:
    """Options of :func:`train_method` (pass any field as a keyword ``option``)."""

    omega: float = 0.5  # RC's reward weight
    beta_reg: float = 0.1  # prior regulariser of the high-level policy (relative to the normalised Q)
    beta_switch: float = 0.0  # persistence of the high level: weight on ||pi_h(s) - pi_h(s')||^2
    prior_target: str | None = None  # "annotators": keep E[log p(z')] >= the annotators' mean log p(E[z'|S]) (beta_reg learned)
    # The p(z') the high level's regulariser reads: "vae" (the VAE prior, N(0, I)) or "aggregate" (the mixture of
    # the annotators' posteriors q(z'|S_a): its modes are real users' skills, not the latent origin).
    hl_prior: str = "vae"
    # "td3": pi_h outputs a continuous z' every step (Eq. 11); "options": pi_h picks one of the K selected skills
    # and commits to it for options.horizon steps (SMDP Q-learning, the control twin of the LM router).
    high_level: str = "td3"
    horizon: int = 50  # env steps per chosen skill with high_level="options"
    # what the options high level chooses between: "skills" (the K selected latents) or "annotators" (every
    # annotator's posterior mean: a larger library, each still a real user's skill)
    option_latents: str = "skills"
    options: OptionsConfig = field(default_factory=OptionsConfig)
    # Safe-VPL's offline skill learner on D_tau relabelled with r_phi: "td3bc" (TD3+BC) or "iql" (implicit
    # Q-learning: clones D_tau's best actions per latent, never queries Q off D_tau's support)
    skill_learner: str = "td3bc"
    iql: IQLConfig = field(default_factory=IQLConfig)
    offline: bool = False  # high-level policy trained offline on D_tau with the BC term (Eq. 12)
    cost_penalty: float | None = None  # Oracle's/SOPL's K; None = default_cost_penalty(scripted D_tau rewards)
    update_every: int = 2  # env steps per TD3 update online (2 halves the compute of a quick run)
    learning_starts: int = 1_000  # capped at a tenth of the profile's td3_steps
    checkpoint_every: int = 10_000
    # share of every TD3 batch of the online baselines drawn from D_tau, relabelled with the baseline's own training
    # reward (0 = online data only, as in the paper's setting; the Oracle then never matched D_tau's best episodes)
    dtau_replay: float = 0.5
    hidden: tuple[int, ...] = (128, 128)  # every TD3 actor/critic and decoder
    latent: LatentConfig = field(default_factory=LatentConfig)
    cpl: CPLConfig = field(default_factory=CPLConfig)
    vpl: VPLConfig = field(default_factory=VPLConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    composition: CompositionConfig = field(default_factory=CompositionConfig)

    @classmethod
    def from_options(cls, **options: Any) -> MethodConfig:
        valid = {f.name for f in fields(cls)}
        bad = sorted(set(options) - valid)
        if bad:
            raise ValueError(f"unknown method option(s) {bad}; valid: {sorted(valid)}")
        cfg = replace(cls(), **options)
        if cfg.update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {cfg.update_every}")
        if not 0.0 <= cfg.dtau_replay < 1.0:
            raise ValueError(f"dtau_replay must be in [0, 1), got {cfg.dtau_replay}")
        if cfg.hl_prior not in ("vae", "aggregate"):
            raise ValueError(f"hl_prior must be 'vae' or 'aggregate', got {cfg.hl_prior!r}")
        if cfg.high_level not in ("td3", "options"):
            raise ValueError(f"high_level must be 'td3' or 'options', got {cfg.high_level!r}")
        if cfg.skill_learner not in ("td3bc", "iql"):
            raise ValueError(f"skill_learner must be 'td3bc' or 'iql', got {cfg.skill_learner!r}")
        if cfg.option_latents not in ("skills", "annotators"):
            raise ValueError(f"option_latents must be 'skills' or 'annotators', got {cfg.option_latents!r}")
        if cfg.high_level == "options" and (cfg.offline or cfg.prior_target or cfg.beta_switch):
            raise ValueError("high_level='options' is online only and has no prior_target / beta_switch")
        return cfg

    def skill_configs(self) -> tuple[CPLConfig, VPLConfig]:
        """Safe-CPL's and Safe-VPL's configs with this run's latent settings and network widths filled in."""
        cpl = replace(self.cpl, latent=self.latent, policy_hidden=self.hidden)
        vpl = replace(self.vpl, latent=self.latent, reward_hidden=self.hidden[0],
                      td3=replace(self.vpl.td3, hidden=self.hidden))  # fmt: skip
        return cpl, vpl


def train_method(
    method: str,
    data: Any,
    crowd: Any,
    profile: Any,
    seed: int,
    workdir: str | Path,
    progress: bool = True,
    skills_dir: str | Path | None = None,
    **options: Any,
) -> Policy:
    """Train ``method`` (one of :data:`METHODS`) on D_tau ``data`` and ``crowd``; returns its policy.

    ``options`` are :class:`MethodConfig` fields (``omega``, ``beta_reg``, ``offline``, ...).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    config = MethodConfig.from_options(**options)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    spaces = Spaces.from_data(data)
    run = _Run(method, data, crowd, profile, seed, workdir, progress, config, spaces,
               skills_dir=Path(skills_dir) if skills_dir is not None else None)  # fmt: skip
    policy = run.train()
    write_json(run.log, workdir / "train_log.json")
    return policy


def skill_policies(
    method: str, data: Any, crowd: Any, profile: Any, seed: int, skills_dir: str | Path, **options: Any
) -> tuple[list[dict[str, Any]], list[Policy], str]:
    """The K selected skills of Safe-VPL/CPL, each as a policy with its latent fixed: ``(records, policies,
    skills_hash)``, records as in ``skill_latents.json`` (latent, log_prior, covered annotators). Loads the fit
    cached in ``skills_dir`` (fits it first if absent)."""
    if method not in ("safe-vpl", "safe-cpl"):
        raise ValueError(f"only Safe-VPL/CPL have skills, got {method!r}")
    spaces = Spaces.from_data(data)
    d = Path(skills_dir)
    run = _Run(method, data, crowd, profile, seed, d, False, MethodConfig.from_options(**options), spaces, skills_dir=d)
    _, skill = run.skills()
    saved = json.loads((d / "skill_latents.json").read_text())

    def fixed(z: torch.Tensor) -> Policy:
        return ActorPolicy(spaces, lambda x: skill(x, z.expand(x.shape[0], -1)))

    return saved["skills"], [fixed(torch.tensor([s["latent"]])) for s in saved["skills"]], saved["config_hash"]


@dataclass
class _Run:
    method: str
    data: Any
    crowd: Any
    profile: Any
    seed: int
    workdir: Path
    progress: bool
    config: MethodConfig
    spaces: Spaces
    log: dict[str, Any] = field(default_factory=dict)
    skills_dir: Path | None = None

    def __post_init__(self) -> None:
        self.skills_dir = self.skills_dir or self.workdir
        self.skills_dir.mkdir(parents=True, exist_ok=True)
        self.inputs = [data_fingerprint(self.data), crowd_fingerprint(self.crowd), self.profile, self.seed]
        self.log = {
            "method": self.method,
            "seed": self.seed,
            "profile": getattr(self.profile, "name", "?"),
            "stages": {},
        }
        self.online = OnlineConfig(
            steps=self.profile.td3_steps,
            learning_starts=min(self.config.learning_starts, max(1, self.profile.td3_steps // 10)),
            update_every=self.config.update_every,
            checkpoint_every=self.config.checkpoint_every,
            max_episode_steps=getattr(self.profile, "max_episode_steps", None),
        )

    def td3_config(self, **kw: Any) -> TD3Config:
        return TD3Config(hidden=self.config.hidden, **kw)

    def stage(self, name: str, seconds: float, **info: Any) -> None:
        self.log["stages"][name] = {"seconds": round(seconds, 2), **info}

    def train(self) -> Policy:
        if self.method in ("safe-vpl", "safe-cpl"):
            return self.train_ours()
        return self.train_baseline()

    # ---- baselines --------------------------------------------------------------------------------------
    def training_reward(self):
        """The training reward of a baseline, of one step or a batch (see :mod:`control.methods.baselines`)."""
        cfg, data = self.config, self.data
        # K from the scripted behaviours only: the agents optimise r itself, so their steps would tie K to how well
        # they trained (Circle, paper: 4.6 -> 12.3, and the Oracle then learns to stand still)
        scripted = data.rew[data.scripted_mask()]
        K = cfg.cost_penalty if cfg.cost_penalty is not None else default_cost_penalty(scripted)
        self.log["cost_penalty"] = K
        if self.method == "oracle":
            return lambda o, a, r, c, o2: r - K * c
        if self.method == "task-only":
            return lambda o, a, r, c, o2: r
        T = self.crowd.crowd.feature_shape[0]
        pairs = np.asarray(self.crowd.pairs)
        seg_a = segment_features(self.spaces, data, pairs[:, 0], T)
        seg_b = segment_features(self.spaces, data, pairs[:, 1], T)
        is_sopl = self.method == "sopl"
        labels = torch.as_tensor(
            np.asarray(self.crowd.safety_labels if is_sopl else self.crowd.labels), dtype=torch.float32
        )
        h = config_hash("reward-model", self.method, cfg.reward_model, *self.inputs)
        path = self.workdir / "reward_model.safetensors"
        t0 = time.perf_counter()
        from control.networks import StepRewardMLP

        model = StepRewardMLP(seg_a.shape[-1], cfg.reward_model.hidden, nonnegative=is_sopl)
        if (found := load_checkpoint(path, h)) is not None:
            load_module("model", model, found[0])
            model.eval().requires_grad_(False)
            info = found[1]["info"]
        else:
            model, hist = fit_segment_model(
                seg_a, seg_b, labels, self.profile.vae_steps, cfg.reward_model, seed=self.seed, cost=is_sopl,
                progress=self.progress, desc=f"{self.method} BT model",
            )  # fmt: skip
            info = {
                "loss_first": hist[0]["loss"],
                "loss_last": float(np.mean([m["loss"] for m in hist[-50:]])),
            }
            save_checkpoint(path, module_tensors("model", model), {"config_hash": h, "info": info})
        self.stage("reward_model", time.perf_counter() - t0, **info)
        score = StepScore(self.spaces, model)
        g = score.raw(data.obs, data.act)
        if is_sopl:
            score.a, score.clip = 1.0 / max(float(np.quantile(g, 0.99)), 1e-8), (0.0, 1.0)
            return lambda o, a, r, c, o2: r - K * score(o, a)
        score.a, score.b = match_scale(g, data.rew)
        omega = cfg.omega
        self.log["omega"] = omega
        return lambda o, a, r, c, o2: rc_mix(r, score(o, a), omega)

    def train_baseline(self) -> Policy:
        reward_fn = self.training_reward()
        agent = TD3(self.spaces.obs_dim, self.spaces.act_dim, self.td3_config(), seed=self.seed)
        cfg = self.config
        relevant: dict[str, Any] = {
            "hidden": cfg.hidden,
            "update_every": cfg.update_every,
            "online": self.online,
        }
        if cfg.dtau_replay > 0:  # absent at 0, so runs from before the option keep their cache
            relevant["dtau_replay"] = cfg.dtau_replay
        if self.method in ("oracle", "sopl"):
            relevant["cost_penalty"] = self.log["cost_penalty"]
        if self.method in ("rc", "sopl"):
            relevant |= {
                "omega": cfg.omega if self.method == "rc" else None,
                "reward_model": cfg.reward_model,
            }
        h = config_hash("online", self.method, relevant, *self.inputs)
        if self.load_final(h, agent):
            return ActorPolicy(self.spaces, agent.actor)
        log = train_online(
            self.data.env_id, agent, self.spaces, reward_fn, self.online, seed=self.seed, workdir=self.workdir,
            config_hash=h, progress=self.progress, desc=self.method,
            offline=relabelled(self.spaces, self.data, reward_fn) if cfg.dtau_replay > 0 else None,
            offline_fraction=cfg.dtau_replay,
        )  # fmt: skip
        self.finish_online(h, agent, log)
        return ActorPolicy(self.spaces, agent.actor)

    def load_final(self, h: str, agent: TD3) -> bool:
        found = load_checkpoint(self.workdir / "final.safetensors", h)
        if found is None:
            return False
        agent.load_state_tensors(found[0])
        self.stage("online", 0.0, cached=True, **found[1].get("summary", {}))
        return True

    def finish_online(self, h: str, agent: TD3 | dict[str, torch.Tensor], log: dict[str, Any]) -> None:
        """Log the run's summary and write ``final.safetensors`` (the agent's state, or the given tensors)."""
        tensors = agent if isinstance(agent, dict) else agent.state_tensors()
        summary = save_final(self.workdir, tensors, log, h)
        self.stage("online", log["wall_s"], **summary)
        self.log["episodes"] = log["episodes"]

    # ---- Safe-VPL / Safe-CPL ---------------------------------------------------------------------------
    def skills(self) -> tuple[Any, torch.nn.Module]:
        """Fit (or load) the VAE and the frozen skill module pi_l(s, z') of this method."""
        cfg, prof = self.config, self.profile
        mcrowd = model_crowd(self.crowd.crowd, self.spaces)
        dtau = self.spaces.tensors(self.data)
        cpl, vpl = cfg.skill_configs()
        iql = replace(cfg.iql, hidden=cfg.hidden) if cfg.skill_learner == "iql" else None
        if iql is not None and self.method != "safe-vpl":
            raise ValueError(f"skill_learner='iql' is Safe-VPL's (Safe-CPL learns its skills without RL), not {self.method}'s")
        parts = (cpl,) if self.method == "safe-cpl" else (vpl,) if iql is None else (vpl, iql)  # td3bc: hash as before
        h = config_hash("skills", self.method, *parts, *self.inputs)
        path = self.skills_dir / "skills.safetensors"
        found = load_checkpoint(path, h)
        t0 = time.perf_counter()
        info: dict[str, Any]
        if self.method == "safe-cpl":
            if found is None:
                vae, skill, hist = fit_cpl_skills(
                    mcrowd, dtau, self.spaces.act_dim, prof.latent_dim, prof.vae_steps, cpl, seed=self.seed,
                    progress=self.progress,
                )  # fmt: skip
                info = _curve(hist, "loss") | _curve(hist, "log_lik") | _curve(hist, "bc_nll")
        else:
            if found is None:
                vae, reward, hist = fit_vpl_reward(
                    mcrowd, prof.latent_dim, prof.vae_steps, vpl, seed=self.seed, progress=self.progress
                )
                info = _curve(hist, "loss") | _curve(hist, "log_lik")
                _, means, stds = pick_skills(vae, mcrowd, prof.num_skills, self.seed)
                skill, skill_hist = train_vpl_skills(
                    vae,
                    reward,
                    means,
                    stds,
                    dtau,
                    prof.skill_steps,
                    vpl,
                    seed=self.seed,
                    progress=self.progress,
                    iql=iql,
                )
                info |= {f"skill_{k}": v for k, v in _curve(skill_hist, "critic_loss").items()}
        if found is not None:
            vae, skill = self.build_skill_modules(mcrowd, cpl, vpl)
            load_module("vae", vae, found[0])
            load_module("skill", skill, found[0])
            skill.eval().requires_grad_(False)
            info = found[1]["info"]
        else:
            save_checkpoint(
                path,
                module_tensors("vae", vae) | module_tensors("skill", skill),
                {"config_hash": h, "info": info},
            )
        self.stage("skills", time.perf_counter() - t0, cached=found is not None, **info)
        selection, means, _ = pick_skills(vae, mcrowd, prof.num_skills, self.seed)
        write_json(
            {
                "latent_dim": prof.latent_dim,
                "skills": [
                    {"latent": z.tolist(), "log_prior": float(lp), "annotators": cov}
                    for z, lp, cov in zip(selection.latents, selection.log_prior, selection.covered)
                ],
                "posterior_means": {a: m.tolist() for a, m in zip(mcrowd.annotator_ids, means)},
                "config_hash": h,
            },
            self.workdir / "skill_latents.json",
        )
        return vae, skill

    def build_skill_modules(self, mcrowd: Any, cpl: CPLConfig, vpl: VPLConfig) -> tuple[Any, torch.nn.Module]:
        from control.methods.latent import build_vae
        from control.methods.skills_vpl import ConcatSkill
        from control.networks import DeterministicActor, GaussianLatentPolicy

        d, a, z = self.spaces.obs_dim, self.spaces.act_dim, self.profile.latent_dim
        vae = build_vae(mcrowd.feature_shape, z, self.config.latent)
        if self.method == "safe-cpl":
            return vae, GaussianLatentPolicy(d, z, a, cpl.policy_hidden)
        return vae, ConcatSkill(DeterministicActor(d + z, a, vpl.td3.hidden))

    def train_ours(self) -> Policy:
        vae, skill = self.skills()
        cfg = self.config
        if cfg.high_level == "options":
            return self.train_options(vae, skill)
        comp = replace(cfg.composition, beta_reg=cfg.beta_reg, beta_switch=cfg.beta_switch, td3=self.td3_config())
        if cfg.prior_target == "annotators":  # the typical log-density of real users' posterior means
            means = json.loads((self.workdir / "skill_latents.json").read_text())["posterior_means"]
            with torch.no_grad():
                target = float(vae.prior.log_prob(torch.tensor(list(means.values()))).mean())
            comp = replace(comp, prior_target=target)
            self.log["prior_target"] = target
        elif cfg.prior_target is not None:
            raise ValueError(f"prior_target must be None or 'annotators', got {cfg.prior_target!r}")
        agent = HighLevelTD3(
            self.spaces.obs_dim,
            self.spaces.act_dim,
            skill,
            self.high_level_prior(vae),
            comp,
            seed=self.seed,
            offline=cfg.offline,
        )
        h = config_hash("high-level", self.method, cfg, *self.inputs)
        self.log["beta_reg"] = cfg.beta_reg
        if self.load_final(h, agent):
            return ActorPolicy(self.spaces, agent.policy)
        if cfg.offline:
            t0 = time.perf_counter()
            hist = train_offline_high_level(
                agent,
                self.spaces.tensors(self.data),
                self.profile.skill_steps,
                seed=self.seed,
                progress=self.progress,
            )
            self.stage("high_level_offline", time.perf_counter() - t0, **_curve(hist, "critic_loss"))
            save_checkpoint(self.workdir / "final.safetensors", agent.state_tensors(), {"config_hash": h})
        else:
            reward_fn = lambda o, a, r, c, o2: r  # noqa: E731 -- the new task's reward only, never the cost
            log = train_online(
                self.data.env_id, agent, self.spaces, reward_fn, self.online, seed=self.seed, workdir=self.workdir,
                config_hash=h, progress=self.progress, desc=f"{self.method} high-level",
            )  # fmt: skip
            self.finish_online(h, agent, log)
        return ActorPolicy(self.spaces, agent.policy)

    def high_level_prior(self, vae: Any) -> Any:
        """The p(z') the high level's regulariser reads: the VAE prior or the annotators' aggregate posterior."""
        if self.config.hl_prior != "aggregate":
            return vae.prior
        means, stds, _ = posterior_means(vae, model_crowd(self.crowd.crowd, self.spaces))
        return GaussianMixturePrior.from_components(means, stds, min_std=self.config.composition.aggregate_min_std)

    def train_options(self, vae: Any, skill: torch.nn.Module) -> Policy:
        """pi_h over the K selected skill latents, each chosen skill committed to for ``horizon`` steps."""
        cfg = self.config
        opts = replace(cfg.options, beta_reg=cfg.beta_reg, horizon=cfg.horizon)
        saved = json.loads((self.workdir / "skill_latents.json").read_text())
        if cfg.option_latents == "annotators":
            latents = torch.tensor(list(saved["posterior_means"].values()))
            with torch.no_grad():
                log_prior = vae.prior.log_prob(latents)
        else:
            latents = torch.tensor([s["latent"] for s in saved["skills"]])
            log_prior = torch.tensor([s["log_prior"] for s in saved["skills"]])
        if cfg.hl_prior == "aggregate":
            with torch.no_grad():
                log_prior = self.high_level_prior(vae).log_prob(latents)
        torch.manual_seed(self.seed)
        values = SkillValues(self.spaces.obs_dim, latents, log_prior, opts)
        h = config_hash("options", self.method, cfg, *self.inputs)
        self.log["beta_reg"] = cfg.beta_reg
        if (found := load_checkpoint(self.workdir / "final.safetensors", h)) is not None:
            load_module("values", values, found[0])
            self.stage("online", 0.0, cached=True, **found[1].get("summary", {}))
        else:
            log = train_options(
                self.data.env_id, values, skill, self.spaces, self.online.steps, opts, seed=self.seed,
                workdir=self.workdir, config_hash=h, checkpoint_every=self.online.checkpoint_every,
                max_episode_steps=self.online.max_episode_steps, progress=self.progress,
            )  # fmt: skip
            self.finish_online(h, module_tensors("values", values), log)
        return OptionsPolicy(self.spaces, values, skill, opts.horizon)


def _curve(history: list[dict[str, float]], key: str) -> dict[str, float]:
    """First and last-50-mean of a metric, for the training log."""
    values = [m[key] for m in history if key in m]
    if not values:
        return {}
    return {f"{key}_first": float(values[0]), f"{key}_last": float(np.mean(values[-50:]))}
