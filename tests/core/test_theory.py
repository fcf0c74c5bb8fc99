"""Theorems 4.2 / 4.3 on small crowds: the global Bradley-Terry reward that vanilla RLHF learns."""

from __future__ import annotations

import itertools

import pytest
import torch

from safecrowd_llm.core.theory import example_crowd, main, theory_check

torch.set_num_threads(1)

L, M = 4, 1.0  # segment length and per-step bound on |r_user| for the hand-made crowds


def _two_opposite_users() -> tuple[torch.Tensor, torch.Tensor]:
    """Five trajectories: user 0 ranks the safe ones 0 > 1 > 2, user 1 the reverse; 3, 4 are unsafe."""
    returns = torch.tensor([[3.0, 1.0, -1.0, 4.0, 2.0], [-3.0, -1.0, 1.0, 0.0, -2.0]])
    return returns, torch.tensor([0, 0, 0, 1, 2])


def _borda_order_pairs(returns: torch.Tensor, steps: torch.Tensor, props: torch.Tensor, K: float) -> dict:
    """Independent oracle: pooled Borda score difference for every pair (a, b), a < b."""
    u = returns - K * steps
    T = u.shape[1]
    score = torch.zeros(T, dtype=torch.float64)
    for z in range(u.shape[0]):
        for a, b in itertools.permutations(range(T), 2):
            score[a] += props[z] * (1.0 if u[z, a] > u[z, b] else 0.5 if u[z, a] == u[z, b] else 0.0)
    return {(a, b): float(score[a] - score[b]) for a, b in itertools.combinations(range(T), 2)}


def _random_crowd(seed: int, Z: int = 3, T: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    returns = torch.randint(-L, L + 1, (Z, T), generator=g).double()
    steps = torch.tensor([0] * (T - 2) + [1, 3])
    return returns, steps


def test_balanced_opposite_users_match_no_one() -> None:
    returns, steps = _two_opposite_users()
    res = theory_check(returns, steps, torch.tensor([0.5, 0.5]), 10.0, segment_length=L, step_bound=M)
    # The users disagree exactly on the three safe-safe pairs; their Borda scores cancel, so r_hat ties them.
    assert set(res.disagreed_pairs) == {(0, 1), (0, 2), (1, 2)}
    assert res.matched_users == ()
    assert not res.matches_majority
    assert res.agreement == (0.0, 0.0)
    assert max(res.reward[:3]) - min(res.reward[:3]) < 1e-6


def test_large_majority_is_reproduced_exactly() -> None:
    returns, steps = _two_opposite_users()
    res = theory_check(returns, steps, torch.tensor([0.1, 0.9]), 10.0, segment_length=L, step_bound=M)
    # |T| = 5; user 1 ranks every disputed pair adjacently except (0, 2) with 1 in between: min N = 0.
    assert res.thresholds[1] == pytest.approx(4 / 5)
    assert res.majority == 1 and res.above_threshold
    assert res.matches_majority and res.matched_users == (1,)
    assert res.agreement[0] == 0.0


@pytest.mark.parametrize(("p_major", "expected"), [(0.6, False), (0.7, True)])
def test_threshold_is_tight_for_a_worst_case_opponent(p_major: float, expected: bool) -> None:
    # |T| = 3, all safe. Majority: a > b > c; opponent: b > c > a. Pooled Borda: B(a) = 2p,
    # B(b) = p + 2(1 - p), so r_hat puts a above b iff p > 2/3 = (|T| - 1) / (0 + |T|).
    returns = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    props = torch.tensor([p_major, 1 - p_major])
    res = theory_check(returns, torch.zeros(3), props, 1.0, segment_length=3, step_bound=1.0)
    assert res.thresholds[0] == pytest.approx(2 / 3)
    assert res.above_threshold is expected and res.matches_majority is expected
    assert (res.reward[0] > res.reward[1]) is expected


@pytest.mark.parametrize("seed", range(6))
def test_threshold_is_sufficient_and_fit_follows_borda(seed: int) -> None:
    returns, steps = _random_crowd(seed)
    for K, p_major in itertools.product([0.5, 3.0, 10.0], [1 / 3, 0.5, 0.7, 0.8, 0.9, 0.97]):
        props = torch.tensor([p_major, (1 - p_major) / 2, (1 - p_major) / 2], dtype=torch.float64)
        res = theory_check(returns, steps, props, K, segment_length=L, step_bound=M)
        if res.above_threshold:
            assert res.matches_majority, (seed, K, p_major, res)
        # r_hat orders every pair exactly like the pooled Borda score (the mechanism behind Thm 4.3).
        for (a, b), d in _borda_order_pairs(returns, steps, props, K).items():
            diff = res.reward[a] - res.reward[b]
            if abs(d) < 1e-9:
                assert abs(diff) < 1e-6
            else:
                assert diff * d > 0, (seed, K, p_major, a, b)


@pytest.mark.parametrize("temperature", [0.0, 1.5])
@pytest.mark.parametrize("props", [[0.5, 0.5], [0.95, 0.05], [0.05, 0.95]])
def test_large_penalty_always_ranks_safe_first(props: list[float], temperature: float) -> None:
    returns, steps = _two_opposite_users()
    K = 2 * L * M + 0.5
    res = theory_check(
        returns, steps, torch.tensor(props), K, segment_length=L, step_bound=M, temperature=temperature
    )
    assert res.k_condition
    assert res.safe_pairs == 6 and res.safe_first


@pytest.mark.parametrize("seed", range(4))
def test_large_penalty_safe_first_on_random_crowds(seed: int) -> None:
    returns, steps = _random_crowd(seed)
    props = torch.tensor([0.8, 0.15, 0.05], dtype=torch.float64)
    res = theory_check(returns, steps, props, 2 * L * M + 1e-3, segment_length=L, step_bound=M)
    assert res.safe_first


def test_small_penalty_lets_majority_taste_beat_safety() -> None:
    returns, steps = _two_opposite_users()
    # User 0 gains 4 on unsafe trajectory 3 (one unsafe step); with K = 0.5 it still beats every safe one.
    res = theory_check(returns, steps, torch.tensor([0.9, 0.1]), 0.5, segment_length=L, step_bound=M)
    assert not res.k_condition
    assert not res.safe_first
    assert res.reward[3] > max(res.reward[:3])


def test_uniform_counts_do_not_change_the_fit() -> None:
    returns, steps = _two_opposite_users()
    props = torch.tensor([0.7, 0.3])
    base = theory_check(returns, steps, props, 1.0, segment_length=L, step_bound=M)
    counted = theory_check(
        returns, steps, props, 1.0, segment_length=L, step_bound=M, pair_counts=torch.full((2, 5, 5), 3.0)
    )
    assert torch.allclose(torch.tensor(base.reward), torch.tensor(counted.reward), atol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unsafe_steps": torch.tensor([0, 0, 1])}, r"unsafe_steps must have shape \(5,\)"),
        ({"proportions": torch.tensor([1.0])}, r"proportions must have shape \(2,\)"),
        ({"proportions": torch.tensor([0.6, 0.6])}, "sum to 1"),
        ({"proportions": torch.tensor([1.5, -0.5])}, "sum to 1"),
        ({"penalty": -1.0}, "penalty K must be finite and >= 0"),
        ({"user_returns": torch.ones(2, 5) * 9.0}, "step_bound"),
        ({"user_returns": torch.ones(5)}, r"user_returns must be \(Z, T\)"),
        ({"unsafe_steps": torch.tensor([0, 0, 0, 0, 9])}, r"unsafe_steps must lie in \[0, L=4\]"),
        ({"pair_counts": torch.ones(5, 5)}, "pair_counts"),
    ],
)
def test_input_validation(kwargs: dict, message: str) -> None:
    returns, steps = _two_opposite_users()
    args = {
        "user_returns": returns,
        "unsafe_steps": steps,
        "proportions": torch.tensor([0.5, 0.5]),
        "penalty": 1.0,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        theory_check(**args, segment_length=L, step_bound=M)


def test_example_crowd_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    crowd = example_crowd()
    balanced = theory_check(
        crowd["user_returns"],
        crowd["unsafe_steps"],
        torch.ones(3) / 3,
        25.0,
        segment_length=crowd["segment_length"],
        step_bound=crowd["step_bound"],
    )
    assert balanced.safe_first and balanced.matched_users == ()
    assert balanced.thresholds[0] == pytest.approx(5 / 6)  # six routes, an adjacent disputed pair
    main(["--majority", "0.9", "--penalties", "25"])
    out = capsys.readouterr().out
    assert "safe-first" in out and "8/8" in out
