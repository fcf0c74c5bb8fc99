"""What can an offline learner get out of D_tau when it is given the *true* reward?

    python benchmarks/control_offline_ceiling.py --env Circle --learners iql td3bc \
        --rewards task user:wide:radius=6.5,speed=2.75 user:wide:radius=8.5,speed=4.0

Safe-VPL's skills are offline RL on D_tau relabelled with the crowd-learned r_phi(s, a, z'). This trains the same
learners (TD3+BC with the skills' alpha, or IQL) on the env's cached D_tau with a known reward instead -- ``task``:
the env reward minus the Oracle's K per costly step (an offline Oracle); ``user:TYPE:goal``: one simulated user's
true r_user minus the crowd's K per costly step -- and rolls each policy out in the env. Where even the true user
reward gives little task reward, the skills cannot be fast however well r_phi is learned; where the task reward
does, the limit is elsewhere. Prints one JSON line per (reward, learner).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # control/ runs from the checkout


def _parse_goal(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="Circle")
    p.add_argument("--profile", default="paper")
    p.add_argument("--learners", nargs="+", default=["iql", "td3bc"], choices=["iql", "td3bc"])
    p.add_argument("--rewards", nargs="+", default=["task"], metavar="task|user:TYPE:k=v,...")
    p.add_argument("--steps", type=int, default=None, help="updates (default: the profile's skill_steps)")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--crowd", default="control/crowds/balanced.yaml", help="for the crowd's K")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from control.crowd import CrowdSpec, user_types
    from control.envs import get_spec
    from control.evaluate import evaluate_policy
    from control.iql import IQL, IQLConfig
    from control.methods import MethodConfig
    from control.methods.baselines import default_cost_penalty
    from control.methods.common import ActorPolicy, Spaces
    from control.offline import load_or_generate
    from control.profiles import get_profile
    from control.td3 import TD3

    torch.set_num_threads(1)
    profile = get_profile(args.profile)
    env_id = get_spec(args.env).env_id
    data = load_or_generate(args.env, profile, progress=False)
    spaces = Spaces.from_data(data)
    d = spaces.tensors(data)
    costly = torch.as_tensor(np.asarray(data.cost) > 0, dtype=torch.float32)
    feats = {k: np.asarray(v, np.float64) for k, v in data.features.items()}
    types = {t.name: t for t in user_types(env_id)}
    crowd_K = CrowdSpec.from_yaml(args.crowd).K
    steps = args.steps or profile.skill_steps
    td3_cfg = MethodConfig().skill_configs()[1].td3

    for name in args.rewards:
        if name == "task":
            K = default_cost_penalty(data.rew[data.scripted_mask()])
            r = d["rew"] - K * costly
        else:
            _, tname, goal = name.split(":", 2)
            K, r_user = crowd_K, types[tname].reward(feats, _parse_goal(goal))
            r = torch.as_tensor(r_user, dtype=torch.float32) - K * costly
        r = (r - r.mean()) / r.std().clamp(min=1e-6)  # standardised, as the skills' r_phi
        for learner in args.learners:
            t0 = time.perf_counter()
            agent = (IQL(spaces.obs_dim, spaces.act_dim, IQLConfig(), seed=args.seed) if learner == "iql"
                     else TD3(spaces.obs_dim, spaces.act_dim, td3_cfg, seed=args.seed))  # fmt: skip
            gen = torch.Generator().manual_seed(args.seed + 1)
            for _ in range(steps):
                idx = torch.randint(0, len(r), (256,), generator=gen)
                agent.update({"obs": d["obs"][idx], "act": d["act"][idx], "rew": r[idx],
                              "next_obs": d["next_obs"][idx], "terminal": d["terminal"][idx]})  # fmt: skip
            eps = evaluate_policy(env_id, ActorPolicy(spaces, agent.actor), args.episodes, args.seed)
            print(json.dumps({"env": env_id, "reward": name, "learner": learner, "K": K, "steps": steps,
                              "env_reward": float(np.mean([e["reward"] for e in eps])),
                              "cost": float(np.mean([e["cost"] for e in eps])),
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
