"""A tiny synthetic crowd with the paper's structure, shared by the core tests.

Items are feature vectors x: x[0] is a matter of taste (type 0 likes it high, type 1 low), x[1] = 1
marks an unsafe item that *every* annotator penalises with -K (never labelled as such), the rest is
noise. Labels are Bradley-Terry draws on u_z(x) = +-x[0] - K x[1].
"""

from __future__ import annotations

import torch

from safecrowd_llm.core import Crowd, PreferenceSet

FEATURES = 4


def sample_items(n: int, g: torch.Generator, unsafe_rate: float = 0.3) -> torch.Tensor:
    x = torch.randn(n, FEATURES, generator=g)
    x[:, 0] = torch.rand(n, generator=g) * 2 - 1
    x[:, 1] = (torch.rand(n, generator=g) < unsafe_rate).float()
    return x


def utility(x: torch.Tensor, user_type: int, k: float) -> torch.Tensor:
    taste = x[..., 0] if user_type == 0 else -x[..., 0]
    return 2.0 * taste - k * x[..., 1]


def make_crowd(
    n_annotators: int, pairs: int, seed: int, k: float = 6.0, proportions: tuple[float, float] = (0.5, 0.5)
) -> tuple[Crowd, dict[str, int]]:
    g = torch.Generator().manual_seed(seed)
    sets, types = [], {}
    n_first = round(proportions[0] * n_annotators)
    for i in range(n_annotators):
        t = 0 if i < n_first else 1
        a, b = sample_items(pairs, g), sample_items(pairs, g)
        p = torch.sigmoid(utility(a, t, k) - utility(b, t, k))
        y = (torch.rand(pairs, generator=g) < p).float()
        aid = f"s{seed}-a{i}"
        sets.append(PreferenceSet(aid, a, b, y))
        types[aid] = t
    return Crowd.from_sets(sets), types
