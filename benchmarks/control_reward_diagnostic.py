"""Does Safe-VPL's crowd-learned reward r_phi(s, a, z') see the shared penalty, step by step?

    python benchmarks/control_reward_diagnostic.py --env Reach --profile paper --vae-steps 3000 \
        --set num_annotators=240

Fits Safe-VPL's encoder + latent Bradley-Terry reward (``control.methods.skills_vpl.fit_vpl_reward``, the
benchmark's settings) on the env's cached D_tau and simulated crowd, then scores r_phi on every D_tau step at
every annotator's posterior mean: the AUC with which -r_phi picks out the costly steps, and its correlation with
that annotator's true per-step reward r_user - K [cost > 0]. For scale it also prints the AUC of a supervised
classifier of cost from (s, a) on held-out episodes: what the features allow. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # control/ runs from the checkout


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="Reach")
    p.add_argument("--profile", default="paper")
    p.add_argument("--vae-steps", type=int, default=None, help="default: the profile's vae_steps")
    p.add_argument("--crowd", default="control/crowds/balanced.yaml")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=INT", help="crowd override (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--supervised", action="store_true", help="also fit the supervised cost classifier")
    args = p.parse_args(argv)

    import torch
    from sklearn.metrics import roc_auc_score

    from control.crowd import CrowdSpec, make_crowd, user_types
    from control.methods import MethodConfig
    from control.methods.common import Spaces, model_crowd
    from control.methods.latent import posterior_means
    from control.methods.skills_vpl import fit_vpl_reward
    from control.offline import load_or_generate
    from control.profiles import get_profile

    torch.set_num_threads(1)
    prof = get_profile(args.profile)
    steps = args.vae_steps or prof.vae_steps
    data = load_or_generate(args.env, prof, progress=False)
    over = {k: int(v) for k, v in (s.split("=", 1) for s in args.set)}
    spec = CrowdSpec.from_yaml(args.crowd).with_overrides(**over)
    crowd = make_crowd(data, spec.with_overrides(seed=spec.seed + args.seed))
    spaces = Spaces.from_data(data)
    _, vpl = MethodConfig().skill_configs()  # the benchmark's Safe-VPL settings
    mcrowd = model_crowd(crowd.crowd, spaces)
    vae, reward, hist = fit_vpl_reward(mcrowd, prof.latent_dim, steps, vpl, seed=args.seed, progress=True)
    means, _, ids = posterior_means(vae, mcrowd)
    feats = spaces.features(torch.as_tensor(data.obs), torch.as_tensor(data.act))
    costly = data.cost > 0
    types = {t.name: t for t in user_types(data.env_id)}
    steps_feats = {n: v[:, None].astype(np.float64) for n, v in data.features.items()}
    aucs, corrs = [], []
    with torch.no_grad():
        for i, annotator in enumerate(ids):
            r = reward.step_reward(feats, means[i]).numpy()
            k = int(annotator.rsplit("-", 1)[-1])  # make_crowd's set ids are "<type>-<index>"
            r_user = types[crowd.annotator_types[k]].reward(steps_feats, crowd.annotator_goals[k])[:, 0]
            aucs.append(float(roc_auc_score(costly, -r)))
            corrs.append(float(np.corrcoef(r, r_user - spec.K * costly)[0, 1]))
    row = {"env": data.env_id, "crowd": over, "pairs": len(crowd.labels), "vae_steps": steps,
           "final_log_lik": hist[-1].get("log_lik"), "cost_auc": float(np.mean(aucs)),
           "cost_auc_range": [float(min(aucs)), float(max(aucs))], "corr_true_reward": float(np.mean(corrs))}  # fmt: skip
    if args.supervised and costly[data.episode % 5 == 0].any():
        from sklearn.ensemble import HistGradientBoostingClassifier

        x, held = np.concatenate([data.obs, data.act], 1), data.episode % 5 == 0
        clf = HistGradientBoostingClassifier(max_iter=200).fit(x[~held], costly[~held])
        row["supervised_cost_auc"] = float(roc_auc_score(costly[held], clf.predict_proba(x[held])[:, 1]))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
