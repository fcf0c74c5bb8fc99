"""The method's central claim in miniature: skills separate users and every skill is safe."""

import torch
from sklearn.linear_model import LogisticRegression

from safecrowd_llm.core import (
    KLSchedule,
    LatentRewardMLP,
    PreferenceVAE,
    SetEncoder,
    StandardNormalPrior,
    bradley_terry_batch_log_likelihood,
    iterate_set_batches,
    pad_sets,
    select_skills,
)

from .synthetic import FEATURES, make_crowd, sample_items


def posterior_means(vae: PreferenceVAE, crowd, context: int = 32) -> torch.Tensor:
    sets = [s.subset(torch.arange(context)) for s in crowd.sets.values()]
    with torch.no_grad():
        return vae.posterior(pad_sets(sets, sets)).mean


def test_vae_separates_user_types_and_every_skill_prefers_safe():
    torch.manual_seed(0)
    train, train_types = make_crowd(64, 64, seed=1)
    held, held_types = make_crowd(40, 64, seed=2)
    # a Deep Set (no attention layers) trains most reliably on this crowd; attention is covered by the
    # invariance tests of the encoder
    vae = PreferenceVAE(SetEncoder(FEATURES, 2, hidden_dim=64, num_layers=0), StandardNormalPrior(2))
    reward = LatentRewardMLP(FEATURES, 2, hidden_dim=64)
    params = [*vae.parameters(), *reward.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    schedule, log_lik = KLSchedule(0.1, "linear", warmup_steps=100), bradley_terry_batch_log_likelihood(reward)
    g = torch.Generator().manual_seed(0)

    # gradients reach every parameter of the encoder and the decoder, except the reward's output
    # bias: Bradley-Terry only sees utility differences, so a constant shift has no gradient
    loss, _ = vae.loss(next(iterate_set_batches(train, 16, (8, 32), generator=g)), log_lik, 0.1)
    loss.backward()
    named = [*vae.encoder.named_parameters(), *reward.named_parameters()]
    no_grad = [n for n, p in named if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == [f"net.{len(reward.net) - 1}.bias"]
    opt.zero_grad()

    history, step = [], 0
    for _ in range(60):
        for batch in iterate_set_batches(train, 16, (8, 32), generator=g):
            loss, metrics = vae.loss(batch, log_lik, schedule(step))
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(metrics["log_lik"])
            step += 1
    assert sum(history[-20:]) / 20 > sum(history[:20]) / 20 + 0.15  # the fit improved

    # (1) a linear probe on z' recovers the (never given) user type of held-out annotators
    probe = LogisticRegression().fit(posterior_means(vae, train).numpy(), [train_types[a] for a in train.annotator_ids])
    accuracy = probe.score(posterior_means(vae, held).numpy(), [held_types[a] for a in held.annotator_ids])
    assert accuracy >= 0.95

    # (2) every decoded skill prefers the safe side on every one of 1000 fresh safe-vs-unsafe pairs,
    # whatever the tastes of the two sides (the shared principle nobody labelled)
    skills = select_skills(posterior_means(vae, train), train.annotator_ids, vae.prior, k=2)
    g_eval = torch.Generator().manual_seed(5)
    safe, unsafe = sample_items(1000, g_eval, unsafe_rate=0.0), sample_items(1000, g_eval, unsafe_rate=1.0)
    with torch.no_grad():
        for z in skills.latents:
            assert (reward.step_reward(safe, z) > reward.step_reward(unsafe, z)).all()
    # and the skills keep the users' differences: opposite tastes, each covering mostly one type
    hi, lo = safe.clone(), safe.clone()
    hi[:, 0], lo[:, 0] = 0.9, -0.9
    with torch.no_grad():
        taste = [(reward.step_reward(hi, z) - reward.step_reward(lo, z)).mean().item() for z in skills.latents]
    assert min(taste) < 0 < max(taste)
    for members in skills.covered:
        majority = max(sum(train_types[a] == t for a in members) for t in (0, 1))
        assert majority / len(members) >= 0.9
