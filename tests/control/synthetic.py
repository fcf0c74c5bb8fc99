"""A tiny synthetic D_tau and crowd where safety is checkable by hand (shared by the methods tests).

One-dimensional action "level": each segment holds an action level L (plus a little noise) for T
steps; a step costs 1 when its action exceeds 0.5 (the unsafe region). Users want their own level
g (r_user = -|a - g|) and everyone pays r_share = -K per costly step. Two user types have safe goals
(g near -0.6 and -0.1), one has an unsafe goal (g near 0.9): its best *safe* behaviour sits just
below 0.5. Observations are irrelevant noise.
"""

from __future__ import annotations

import numpy as np
import torch

from control.crowd import CrowdSpec, SimulatedCrowd
from control.offline import OfflineData
from safecrowd_llm.core import Crowd, PreferenceSet

T = 5
UNSAFE = 0.5
GOALS = {"low": -0.6, "mid": -0.1, "fast": 0.9}


def make_data(num_segments: int = 400, seed: int = 0) -> OfflineData:
    rng = np.random.default_rng(seed)
    levels = rng.uniform(-1, 1, num_segments)
    act = np.clip(levels[:, None] + 0.05 * rng.standard_normal((num_segments, T)), -1, 1).reshape(-1, 1)
    n = len(act)
    obs = rng.standard_normal((n, 2)).astype(np.float32)
    cost = (act[:, 0] > UNSAFE).astype(np.float32)
    episode = np.repeat(np.arange(num_segments), T)
    end = np.zeros(n, bool)
    end[T - 1 :: T] = True
    return OfflineData(
        env_id="synthetic",
        obs=obs,
        act=act.astype(np.float32),
        rew=act[:, 0].astype(np.float32),  # the "task" wants large actions
        cost=cost,
        next_obs=np.roll(obs, -1, 0),
        terminal=np.zeros(n, bool),
        episode_end=end,
        episode=episode.astype(np.int64),
        features={"level": act[:, 0].astype(np.float32)},
    )


def segment_return(data: OfflineData, starts: np.ndarray, goal: float, K: float = 2.0) -> np.ndarray:
    idx = starts[:, None] + np.arange(T)
    a = data.act[idx, 0]
    return (-np.abs(a - goal) - K * (a > UNSAFE)).sum(1)


def make_crowd(data: OfflineData, per_type: int = 8, pairs: int = 40, seed: int = 0) -> SimulatedCrowd:
    rng = np.random.default_rng(seed)
    starts = data.segment_starts(T)
    starts = starts[starts % T == 0]  # whole segments only
    feats = np.concatenate([data.obs, data.act], 1)
    sets, all_pairs, labels, annot, types, safety = [], [], [], [], [], []
    k = 0
    for name, goal in GOALS.items():
        for _ in range(per_type):
            g = goal + 0.05 * rng.standard_normal()
            a, b = rng.choice(starts, pairs), rng.choice(starts, pairs)
            ra, rb = segment_return(data, a, g), segment_return(data, b, g)
            y = (rng.random(pairs) < 1 / (1 + np.exp(-(ra - rb) / 0.3))).astype(np.float32)
            ca, cb = data.segment_sums(data.cost, a, T), data.segment_sums(data.cost, b, T)
            rows = np.arange(k * pairs, (k + 1) * pairs)
            ia, ib = a[:, None] + np.arange(T), b[:, None] + np.arange(T)
            sets.append(PreferenceSet(f"{name}-{k:04d}", torch.from_numpy(feats[ia]), torch.from_numpy(feats[ib]),
                                      torch.from_numpy(y), ids=torch.from_numpy(rows)))  # fmt: skip
            all_pairs.append(np.stack([a, b], 1))
            labels.append(y)
            annot.append(np.full(pairs, k))
            types.append(name)
            safety.append(np.where(ca < cb, 1.0, np.where(ca > cb, 0.0, 0.5)).astype(np.float32))
            k += 1
    return SimulatedCrowd(
        env_id="synthetic",
        spec=CrowdSpec(segment_length=T, K=2.0, num_annotators=k, pairs_per_annotator=pairs),
        crowd=Crowd.from_sets(sets),
        pairs=np.concatenate(all_pairs).astype(np.int64),
        labels=np.concatenate(labels),
        annotator=np.concatenate(annot).astype(np.int64),
        annotator_types=types,
        safety_labels=np.concatenate(safety),
    )


def held_out_pairs(n: int = 200, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Levels of held-out (safe, unsafe) segment pairs near the boundary: safe in [0.25, 0.45], unsafe in
    [0.6, 0.85]. Even the unsafe-goal user (g = 0.9) prefers the safe side once the penalty counts."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.25, 0.45, n), rng.uniform(0.6, 0.85, n)
