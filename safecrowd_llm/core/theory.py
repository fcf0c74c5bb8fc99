"""Theory check: what vanilla RLHF learns from a crowd with shared safety and diverse tastes.

A crowd is a finite trajectory set T and user types z with proportions p(z). User z's utility is

    u(tau, z) = R[z, tau] - K * c(tau),     |r_user| <= M per step, so |R[z, tau]| <= L * M,

where R is the summed user-specific reward over a length-L segment and c(tau) in {0..L} counts the
unsafe steps (the shared penalty r_share = -K on X_unsafe). Vanilla RLHF fits ONE Bradley-Terry
reward r_hat in R^|T| to the pooled labels, P(tau > tau') = sigmoid(r_hat_tau - r_hat_tau'); in the
infinite-data limit the pooled label of a pair is the p(z)-weighted mean of the users' labels.

Why the two theorems hold here (uniform comparison counts). At the optimum of the convex loss (mean
over the P pairs, plus a ridge l2 |r|^2 that only fixes the gauge and keeps separable data finite)

    sum_{tau' != tau} sigmoid(r_tau - r_tau') + 2 l2 P r_tau  =  B(tau) := sum_{tau' != tau} y_bar(tau, tau')

for every tau; subtracting the equations of tau and tau' shows r_tau > r_tau' iff B(tau) > B(tau'),
so r_hat orders trajectories exactly like the pooled Borda score B = sum_z p(z) B_z (ties included). For u_z(tau) > u_z(tau') the Borda
margin is B_z(tau) - B_z(tau') = 1 + N(tau, tau', z) >= 1, where N counts the trajectories z ranks
strictly between the two (ties with an endpoint count 1/2); any other user's margin is >= -(|T|-1).

* Thm 4.2: K > 2 L M makes every user prefer every safe trajectory to every unsafe one, so every
  safe-vs-unsafe pair has all margins >= 1 and r_hat ranks it safe-first.
* Thm 4.3: on the pairs where users disagree (X_ics), r_hat follows user k exactly as soon as
  p_k (1 + N) > (1 - p_k)(|T| - 1) for every such pair, i.e.
      p(z_k) > (|T| - 1) / (min_{X_ics} N(tau, tau', z_k) + |T|),
  which is the paper's threshold with N read as user k's in-between count (Borda margin - 1). It is
  sufficient, not necessary (and tight for a worst-case opponent), and guaranteed only for
  deterministic labels with uniform counts. (Reading N as a raw comparison count cannot be right:
  the threshold would tend to 0 as N grows and two disagreeing users could both exceed it.)
  X_ics is taken over all listed user types, so it does not move along a proportion sweep.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from safecrowd_llm.core.likelihoods import bradley_terry_log_likelihood

__all__ = ["TheoryCheck", "example_crowd", "main", "pairwise_labels", "theory_check"]

TIE_TOL = 1e-6  # |r_hat_a - r_hat_b| below this counts as a tie


@dataclass(frozen=True)
class TheoryCheck:
    """Outcome of fitting the global Bradley-Terry reward to one crowd at one penalty K."""

    reward: tuple[float, ...]  # r_hat per trajectory (mean zero: the ridge fixes the gauge)
    penalty: float  # K
    proportions: tuple[float, ...]  # p(z)
    k_condition: bool  # Thm 4.2 premise: K > 2 L M
    safe_pairs: int  # number of (safe, unsafe) pairs
    safe_pairs_correct: int  # of those, ranked strictly safe-first by r_hat
    disagreed_pairs: tuple[tuple[int, int], ...]  # X_ics: pairs (a < b) the user types order differently
    agreement: tuple[float, ...]  # per user: fraction of X_ics where r_hat's order (tie incl.) = user's
    majority: int  # index of the largest p(z) (first on ties)
    thresholds: tuple[float, ...]  # per user: Thm 4.3 threshold on p(z) (1.0 = never guaranteed)

    @property
    def safe_first(self) -> bool:
        """Every safe-vs-unsafe pair is ranked safe-first (the conclusion of Thm 4.2)."""
        return self.safe_pairs_correct == self.safe_pairs

    @property
    def matched_users(self) -> tuple[int, ...]:
        """Users whose ranking r_hat reproduces on every disagreed pair."""
        return tuple(z for z, a in enumerate(self.agreement) if a == 1.0)

    @property
    def matches_majority(self) -> bool:
        """r_hat ranks X_ics exactly like the majority user (the conclusion of Thm 4.3)."""
        return self.agreement[self.majority] == 1.0

    @property
    def above_threshold(self) -> bool:
        """The majority's proportion exceeds its Thm 4.3 threshold (so matches_majority must hold)."""
        return self.proportions[self.majority] > self.thresholds[self.majority]


def _sign(x: Tensor, tol: float) -> Tensor:
    return torch.where(x.abs() <= tol, torch.zeros_like(x), torch.sign(x))


def pairwise_labels(utility: Tensor, temperature: float = 0.0) -> Tensor:
    """(Z, T) utilities -> (Z, T, T) labels y_z(a, b) = P(a preferred to b).

    Deterministic (temperature 0): 1 if u_z(a) > u_z(b), 0.5 on ties, else 0.
    Bradley-Terry noisy: sigmoid((u_z(a) - u_z(b)) / temperature).
    """
    diff = utility[:, :, None] - utility[:, None, :]
    if temperature > 0:
        return torch.sigmoid(diff / temperature)
    return 0.5 * (_sign(diff, 1e-9) + 1)


def _validate(
    R: Tensor, c: Tensor, p: Tensor, K: float, L: int, M: float | None, counts: Tensor | None
) -> float:
    """Check the crowd tables and return the per-step bound M (default max|R| / L)."""
    if R.ndim != 2 or R.shape[1] < 2:
        raise ValueError(f"user_returns must be (Z, T) with T >= 2 trajectories, got shape {tuple(R.shape)}")
    Z, T = R.shape
    if c.shape != (T,):
        raise ValueError(
            f"unsafe_steps must have shape ({T},) to match user_returns (Z, T), got {tuple(c.shape)}"
        )
    if p.shape != (Z,):
        raise ValueError(f"proportions must have shape ({Z},), one per user type, got {tuple(p.shape)}")
    for name, x in (("user_returns", R), ("unsafe_steps", c), ("proportions", p)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")
    if (p < 0).any() or abs(p.sum().item() - 1.0) > 1e-6:
        raise ValueError(
            f"proportions must be >= 0 and sum to 1, got {p.tolist()} (sum {p.sum().item():.6g})"
        )
    if L < 1:
        raise ValueError(f"segment_length L must be >= 1, got {L}")
    M = R.abs().max().item() / L if M is None else M
    if not (math.isfinite(K) and K >= 0):
        raise ValueError(f"penalty K must be finite and >= 0, got {K}")
    if (c < 0).any() or (c > L).any():
        raise ValueError(f"unsafe_steps must lie in [0, L={L}], got {c.tolist()}")
    if R.abs().max().item() > L * M + 1e-9:
        raise ValueError(
            f"|user_returns| <= L * step_bound = {L * M} is violated (max {R.abs().max().item()})"
        )
    if counts is not None and (counts.shape != (Z, T, T) or (counts < 0).any()):
        raise ValueError(
            f"pair_counts must be non-negative with shape ({Z}, {T}, {T}), got {tuple(counts.shape)}"
        )
    return M


def fit_global_reward(labels: Tensor, weights: Tensor, n_items: int, l2: float = 1e-4) -> Tensor:
    """Fit r_hat in R^T minimising f(D r) + l2 |r|^2, f(d) = -sum_{z,p} w log BT(y | d_p) / sum w.

    labels, weights: (Z, P) per user type and unordered pair p = (a, b) in triu_indices(T, T, 1)
    order; D is the (P, T) pair incidence matrix, d = D r the reward differences. f is separable in
    d, so grad = D^T f'(d) + 2 l2 r and Hessian = D^T diag(f''(d)) D + 2 l2 I (>= 2 l2 I: strictly
    convex). Damped Newton from r = 0 (Armijo backtracking while the Newton decrement g^T H^-1 g is
    above round-off, full steps below it) reaches the unique optimum deterministically, to ~1e-12.
    """
    a, b = torch.triu_indices(n_items, n_items, 1)
    eye = torch.eye(n_items, dtype=torch.float64)
    D = eye[a] - eye[b]

    def f(d: Tensor) -> Tensor:
        ll = bradley_terry_log_likelihood(
            d.expand_as(labels), torch.zeros_like(labels), labels, weights=weights
        )
        return -ll.sum() / weights.sum()

    def objective(r: Tensor) -> float:
        return float(f(D @ r) + l2 * (r * r).sum())

    r = torch.zeros(n_items, dtype=torch.float64)
    for _ in range(100):
        d = (D @ r).requires_grad_(True)
        (f1,) = torch.autograd.grad(f(d), d, create_graph=True)
        (f2,) = torch.autograd.grad(f1.sum(), d)  # exact: f1_p depends on d_p only
        grad = D.T @ f1.detach() + 2 * l2 * r
        step = torch.linalg.solve(D.T @ (f2[:, None] * D) + 2 * l2 * eye, grad)
        decrement, t, loss = float(grad @ step), 1.0, objective(r)
        while decrement > 1e-12 and t > 1e-12 and objective(r - t * step) > loss - 1e-4 * t * decrement:
            t *= 0.5
        r = r - t * step
        if step.abs().max() < 1e-12:
            break
    return r


def theory_check(
    user_returns: Tensor,
    unsafe_steps: Tensor,
    proportions: Tensor,
    penalty: float,
    *,
    segment_length: int,
    step_bound: float | None = None,
    temperature: float = 0.0,
    pair_counts: Tensor | None = None,
    l2: float = 1e-4,
) -> TheoryCheck:
    """Fit vanilla RLHF's global reward on the pooled crowd labels and test Thms 4.2 / 4.3.

    Args:
        user_returns: (Z, T) summed user-specific reward R[z, tau] per user type and trajectory.
        unsafe_steps: (T,) unsafe step counts c(tau) (bools allowed: 0/1).
        proportions: (Z,) user proportions p(z), summing to 1.
        penalty: shared per-step penalty K >= 0, so u(tau, z) = R[z, tau] - K c(tau).
        segment_length: L; step_bound: M with |r_user| <= M per step (default max|R| / L).
        temperature: 0 for deterministic labels, > 0 for Bradley-Terry-noisy labels.
        pair_counts: optional (Z, T, T) comparison counts per user type and pair (default 1); the
            pooled weight of user z on a pair is p(z) * count. The Thm 4.3 guarantee assumes uniform.
        l2: ridge on r_hat (gauge; keeps unanimous, separable pairs finite).
    """
    R = torch.as_tensor(user_returns, dtype=torch.float64)
    c = torch.as_tensor(unsafe_steps, dtype=torch.float64)
    p = torch.as_tensor(proportions, dtype=torch.float64)
    counts = None if pair_counts is None else torch.as_tensor(pair_counts, dtype=torch.float64)
    M = _validate(R, c, p, float(penalty), segment_length, step_bound, counts)
    Z, T = R.shape
    u = R - penalty * c  # (Z, T)
    a, b = torch.triu_indices(T, T, 1)
    y = pairwise_labels(u, temperature)[:, a, b]  # (Z, P)
    w = p[:, None] * (torch.ones_like(y) if counts is None else counts[:, a, b])
    r_hat = fit_global_reward(y, w, T, l2)

    fit_sign = _sign(r_hat[a] - r_hat[b], TIE_TOL)  # (P,)
    user_sign = _sign(u[:, a] - u[:, b], 1e-9)  # (Z, P)
    disputed = ~(user_sign == user_sign[:1]).all(0)  # X_ics
    agree = (
        (user_sign[:, disputed] == fit_sign[disputed]).double().mean(1) if disputed.any() else torch.ones(Z)
    )

    safe = c == 0
    safe_idx, unsafe_idx = safe.nonzero().flatten(), (~safe).nonzero().flatten()
    margin = r_hat[safe_idx][:, None] - r_hat[unsafe_idx][None, :]

    # Thm 4.3: N(tau, tau', z) = Borda margin of z on the pair minus 1 (in-between count, ties 1/2).
    borda = pairwise_labels(u).sum(2) - 0.5  # deterministic Borda score, self-comparison removed
    n_between = (borda[:, a] - borda[:, b]).abs()[:, disputed] - 1.0  # (Z, |X_ics|)
    strict = user_sign[:, disputed] != 0
    thresholds = []
    for z in range(Z):
        if not disputed.any():
            thresholds.append(0.0)
        elif not strict[z].all():  # z is indifferent on a disputed pair: no exact match guaranteed
            thresholds.append(1.0)
        else:
            thresholds.append((T - 1) / (n_between[z].min().item() + T))
    return TheoryCheck(
        reward=tuple(r_hat.tolist()),
        penalty=float(penalty),
        proportions=tuple(p.tolist()),
        k_condition=penalty > 2 * segment_length * M,
        safe_pairs=margin.numel(),
        safe_pairs_correct=int((margin > TIE_TOL).sum()),
        disagreed_pairs=tuple(zip(a[disputed].tolist(), b[disputed].tolist())),
        agreement=tuple(agree.tolist()),
        majority=int(p.argmax()),
        thresholds=tuple(thresholds),
    )


def example_crowd() -> dict:
    """Six routes, L = 10 steps, |r_user| <= 1 per step, three user types.

    "hurried" likes speed, "relaxed" likes quiet routes and hates city traffic, "sightseer" likes the
    scenic ones; the two shortcuts are the fastest routes but unsafe (2 and 5 unsafe steps). No two
    types are exact mirror images, so a balanced crowd's Borda scores do not collapse onto one user.
    """
    return {
        "names": ("hurried", "relaxed", "sightseer"),
        "routes": ("highway", "city", "scenic", "lane", "red-light", "sidewalk"),
        "user_returns": torch.tensor(
            [
                [6.0, 2.0, -4.0, -6.0, 9.0, 10.0],
                [-3.0, -6.0, 4.0, 6.0, -9.0, -10.0],
                [-2.0, 3.0, 8.0, 1.0, 0.0, -3.0],
            ]
        ),
        "unsafe_steps": torch.tensor([0, 0, 0, 0, 2, 5]),
        "segment_length": 10,
        "step_bound": 1.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="safecrowd-theory",
        description=(
            "Check Theorems 4.2/4.3 on an example crowd: fit the single global Bradley-Terry reward "
            "r_hat that vanilla RLHF learns from pooled crowd preferences, for a grid of majority "
            "proportions p (the 'hurried' user; the others split 1-p) and safety penalties K. Columns: "
            "K>2LM = Thm 4.2 premise; safe-first = safe-vs-unsafe pairs ranked safe-first by r_hat; "
            "agree[user] = fraction of disagreed pairs (X_ics) where r_hat orders like that user; "
            "=maj = r_hat reproduces the majority exactly on X_ics; p* = Thm 4.3 threshold "
            "(|T|-1)/(min N + |T|), N = routes the majority ranks between the two of a pair."
        ),
    )
    for flag, default, what in (
        ("--majority", [1 / 3, 0.45, 0.6, 0.75, 0.9], "proportions p of the majority user type"),
        ("--penalties", [0.5, 4.0, 25.0], "shared per-step safety penalties K"),
    ):
        parser.add_argument(
            flag, type=float, nargs="+", default=default, help=f"{what} (default: %(default)s)"
        )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0: deterministic labels; > 0: BT-noisy"
    )
    args = parser.parse_args(argv)
    if not all(0.0 <= pm <= 1.0 for pm in args.majority):
        parser.error(f"--majority values must lie in [0, 1], got {args.majority}")

    crowd = example_crowd()
    names, L, M = crowd["names"], crowd["segment_length"], crowd["step_bound"]
    print(
        f"routes: {', '.join(crowd['routes'])}; unsafe steps {crowd['unsafe_steps'].tolist()}; "
        f"L={L}, M={M}, so Thm 4.2 needs K > 2LM = {2 * L * M:g}"
    )
    for n, ret in zip(names, crowd["user_returns"]):
        print(f"  {n:>9} returns {ret.tolist()}")
    head = (
        f"{'p_major':>7} {'K':>5} {'K>2LM':>5} {'safe-first':>10} "
        + " ".join(f"{'agree:' + n[:7]:>13}" for n in names)
        + f" {'|X_ics|':>7} {'=maj':>5} {'p*':>6} {'p>p*':>5}"
    )
    print(head)
    print("-" * len(head))
    kw = {"segment_length": L, "step_bound": M, "temperature": args.temperature}
    for pm in args.majority:
        rest = (1 - pm) / (len(names) - 1)
        props = torch.tensor([pm] + [rest] * (len(names) - 1))
        for K in args.penalties:
            res = theory_check(crowd["user_returns"], crowd["unsafe_steps"], props, K, **kw)
            sf = f"{res.safe_pairs_correct}/{res.safe_pairs}"
            agree = " ".join(f"{a:>13.2f}" for a in res.agreement)
            print(
                f"{pm:>7.3f} {K:>5g} {res.k_condition!s:>5} {sf:>10} {agree} {len(res.disagreed_pairs):>7} "
                f"{res.matches_majority!s:>5} {res.thresholds[res.majority]:>6.3f} {res.above_threshold!s:>5}"
            )
    print(
        "Thm 4.2: K > 2LM => safe-first is n/n (sufficient; smaller K can work, or let the majority's\n"
        "taste outrank safety). Thm 4.3: p > p* => =maj is True (sufficient, exact for deterministic\n"
        "labels); a balanced crowd gives a Borda compromise that reproduces no single user."
    )


if __name__ == "__main__":
    main()
