"""Simulated crowds: per-env user goals, a shared safety penalty, Bradley-Terry labels over D_tau segments.

The paper's crowd reward is ``r(s, a, z) = r_user(s, a, z) + r_share(s, a)``: each annotator has a goal
``z`` drawn from its *user type* (preferred speed, lane, radius, approach path ...), read from the
per-step ``OfflineData.features``; ``r_share = -K`` on every step where the env reports cost > 0, for
everyone. Some types' goals lie in the unsafe region (``unsafe_goal``: e.g. "fast" wants a speed above
the env's limit). Nothing is labelled safe or unsafe: an annotator compares two segments of length T by
their summed ``r`` with a Bradley-Terry model, ``P(a > b) = sigmoid((R_a - R_b) / temperature)``
(temperature 0 = always the higher return), and each label is then flipped with probability ``flip_prob``.

A :class:`CrowdSpec` comes from YAML (``control/crowds/*.yaml``); ``proportions`` are keyed by *role*
(``safe_goal`` / ``unsafe_goal``, split equally among that env's types of the role, so one file fits all
six envs) or by the env's type names; ``goals`` replaces a type's goal ranges for one env (which users the
crowd holds is part of the experiment). :func:`make_crowd` is deterministic in ``(data, spec)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from control.offline import OfflineData

__all__ = ["USER_TYPES", "CrowdSpec", "SimulatedCrowd", "UserType", "label_stats", "make_crowd", "user_types"]

Features = dict[str, np.ndarray]  # name -> (M, T)
Goal = dict[str, float]


# ------------------------------------------------------------------------------------------- user types
@dataclass(frozen=True)
class UserType:
    """A family of user goals: ``goals`` are uniform ranges of the goal parameters, ``reward`` maps
    per-step features ``(M, T)`` and one goal to ``r_user`` ``(M, T)`` (roughly in [-2, 0])."""

    name: str
    unsafe_goal: bool  # the goal lies in the region where the env reports cost
    goals: dict[str, tuple[float, float]]
    reward: Callable[[Features, Goal], np.ndarray]
    description: str = ""

    def draw(self, rng: np.random.Generator) -> Goal:
        return {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in self.goals.items()}


def _track(feature: str, key: str, scale: float) -> Callable[[Features, Goal], np.ndarray]:
    """r_user = -|feature - goal[key]| / scale, clipped at -2."""
    return lambda f, z: np.maximum(-np.abs(f[feature] - z[key]) / scale, -2.0)


def _sum(*parts: Callable[[Features, Goal], np.ndarray], weights: tuple[float, ...] | None = None):
    w = weights or (1.0 / len(parts),) * len(parts)
    return lambda f, z: sum(wi * p(f, z) for wi, p in zip(w, parts, strict=True))


def _velocity_types(threshold: float) -> tuple[UserType, ...]:
    return (
        UserType("slow", False, {"speed": (0.3 * threshold, 0.9 * threshold)},
                 _track("x_velocity", "speed", threshold), "prefers a forward speed below the limit"),
        UserType("fast", True, {"speed": (1.1 * threshold, 1.5 * threshold)},
                 _track("x_velocity", "speed", threshold), "prefers a forward speed above the limit"),
    )  # fmt: skip


USER_TYPES: dict[str, tuple[UserType, ...]] = {
    "SafetyCarRun-v0": (  # speed limit 1.5 m/s, lane boundaries at |y| = 2
        UserType(
            "lane",
            False,
            {"lane": (-1.2, 1.2), "speed": (0.6, 1.3)},
            _sum(_track("y", "lane", 1.0), _track("x_velocity", "speed", 1.0)),
            "prefers a lane inside the boundaries at a moderate speed",
        ),
        UserType(
            "fast",
            True,
            {"speed": (1.7, 2.5)},
            _track("x_velocity", "speed", 1.0),
            "prefers driving above the speed limit",
        ),
    ),
    "SafetyBallCircle-v0": (  # walls at |x| = 6
        UserType(
            "tight",
            False,
            {"radius": (2.0, 4.5), "speed": (0.8, 2.5)},
            _sum(_track("radius", "radius", 2.0), _track("tangential_velocity", "speed", 1.0)),
            "prefers a small clockwise circle",
        ),
        UserType(
            "wide",
            True,
            {"radius": (6.5, 8.5), "speed": (1.5, 4.0)},
            _sum(_track("radius", "radius", 2.0), _track("tangential_velocity", "speed", 1.0)),
            "prefers a circle wider than the walls allow",
        ),
    ),
    "SafetyBallReach-v0": (  # puddles and a moving box on the way
        UserType(
            "scenic",
            False,
            {"bend": (0.4, 0.9), "speed": (0.8, 1.5)},
            _sum(
                lambda f, z: -np.abs(np.abs(f["heading_error"]) - z["bend"]) / np.pi,
                _track("speed", "speed", 1.0),
            ),
            "prefers a curved, unhurried approach to the goal",
        ),
        UserType(
            "direct",
            True,
            {"speed": (1.5, 2.5)},
            _sum(lambda f, z: -np.abs(f["heading_error"]) / np.pi, _track("approach_speed", "speed", 1.0)),
            "prefers the straight line to the goal at speed, through whatever is in the way",
        ),
    ),
    "SafetyHalfCheetahVelocity-v1": _velocity_types(3.2096),
    "SafetyHopperVelocity-v1": _velocity_types(0.7402),
    "SafetySwimmerVelocity-v1": _velocity_types(0.2282),
}


def user_types(env: str) -> tuple[UserType, ...]:
    """The user-goal family of ``env`` (id or alias)."""
    from control.envs import get_spec

    return USER_TYPES[get_spec(env).env_id]


# ------------------------------------------------------------------------------------------- spec
_ROLES = ("safe_goal", "unsafe_goal")


@dataclass(frozen=True)
class CrowdSpec:
    """How a simulated crowd is drawn (one YAML file, valid for every env).

    Attributes:
        proportions: type shares, keyed by role (``safe_goal``/``unsafe_goal``) or by the env's type names.
        num_annotators: annotators in the crowd.
        pairs_per_annotator: comparisons per annotator (the size of S_z).
        segment_length: T, steps per compared segment.
        K: shared safety penalty per step with cost > 0 (r_share = -K).
        flip_prob: probability that a label is flipped after the Bradley-Terry draw.
        temperature: Bradley-Terry temperature in return units (0 = noiseless argmax).
        goals: goal ranges that replace the defaults, ``{env id or alias: {type: {parameter: [lo, hi]}}}``.
        seed: seeds goals, pairs and labels.
        name: label for results (the YAML file's stem).
        source: the file it came from (for error messages).
    """

    proportions: dict[str, float] = field(default_factory=lambda: {"safe_goal": 1.0, "unsafe_goal": 1.0})
    num_annotators: int = 60
    pairs_per_annotator: int = 40
    segment_length: int = 25
    K: float = 10.0
    flip_prob: float = 0.0
    temperature: float = 1.0
    goals: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    seed: int = 0
    name: str = "custom"
    source: str = "<in memory>"

    def _fail(self, fld: str, msg: str) -> None:
        raise ValueError(f"crowd spec {self.source}: field {fld!r}: {msg}")

    def __post_init__(self) -> None:
        if not isinstance(self.proportions, dict) or not self.proportions:
            self._fail(
                "proportions",
                f"must be a non-empty mapping of type or role to share, got {self.proportions!r}",
            )
        for key, share in self.proportions.items():
            if not isinstance(share, int | float) or isinstance(share, bool) or not share > 0:
                self._fail(f"proportions.{key}", f"must be a number > 0, got {share!r}")
        for name in ("num_annotators", "pairs_per_annotator", "segment_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                self._fail(name, f"must be an integer >= 1, got {value!r}")
        for name, lo, hi in (
            ("K", 0.0, float("inf")),
            ("temperature", 0.0, float("inf")),
            ("flip_prob", 0.0, 0.5),
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
                self._fail(name, f"must be a number in [{lo}, {hi}], got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            self._fail("seed", f"must be an integer, got {self.seed!r}")
        if not isinstance(self.goals, dict):
            self._fail("goals", f"must be a mapping of env to {{type: {{parameter: [lo, hi]}}}}, got {self.goals!r}")
        from control.envs import get_spec

        for env in self.goals:
            try:
                get_spec(env)
            except ValueError as err:
                self._fail(f"goals.{env}", str(err))
            self.user_types(env)  # validates every override of env

    def user_types(self, env: str) -> tuple[UserType, ...]:
        """``env``'s user types with this spec's goal ranges in place of the defaults."""
        from control.envs import get_spec

        env_id = get_spec(env).env_id
        over: dict[str, Any] = {}
        for key, value in self.goals.items():
            if get_spec(key).env_id == env_id:
                over = value
        types = {t.name: t for t in user_types(env_id)}
        if not isinstance(over, dict):
            self._fail(f"goals.{env}", f"must map type names to goal ranges, got {over!r}")
        out = dict(types)
        for tname, ranges in over.items():
            where = f"goals.{env}.{tname}"
            if tname not in types:
                self._fail(where, f"{env_id} has no user type {tname!r}; its types: {', '.join(types)}")
            if not isinstance(ranges, dict) or not ranges:
                self._fail(where, f"must map goal parameters to [lo, hi], got {ranges!r}")
            new = dict(types[tname].goals)
            for param, rng in ranges.items():
                if param not in new:
                    self._fail(f"{where}.{param}", f"{tname!r} has goal parameters {', '.join(new)}")
                ok = isinstance(rng, list | tuple) and len(rng) == 2
                ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in rng) and rng[0] <= rng[1]
                if not ok:
                    self._fail(f"{where}.{param}", f"must be [lo, hi] with lo <= hi, got {rng!r}")
                new[param] = (float(rng[0]), float(rng[1]))
            out[tname] = replace(types[tname], goals=new)
        return tuple(out.values())

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> CrowdSpec:
        """Read a spec; ``overrides`` (e.g. ``flip_prob=0.2``) replace file values. Unknown fields are errors."""
        import yaml

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"crowd spec {path}: file not found") from None
        except yaml.YAMLError as err:
            raise ValueError(f"crowd spec {path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"crowd spec {path}: top level must be a mapping, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)} - {"source"}
        for key in list(raw) + list(overrides):
            if key not in known:
                raise ValueError(
                    f"crowd spec {path}: unknown field {key!r}; valid: {', '.join(sorted(known))}"
                )
        raw.setdefault("name", path.stem)
        raw.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(raw.get("proportions"), dict):
            raw["proportions"] = {str(k): v for k, v in raw["proportions"].items()}
        return cls(**raw, source=str(path))

    def with_overrides(self, **overrides: Any) -> CrowdSpec:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def type_shares(self, env: str) -> dict[str, float]:
        """Normalised share of each of ``env``'s user types (roles split equally among their types)."""
        types = user_types(env)
        names = [t.name for t in types]
        keys = set(self.proportions)
        shares = dict.fromkeys(names, 0.0)
        if keys <= set(_ROLES):
            for role in keys:
                members = [t.name for t in types if t.unsafe_goal == (role == "unsafe_goal")]
                for m in members:
                    shares[m] += self.proportions[role] / len(members)
        elif keys <= set(names):
            shares.update(self.proportions)
        else:
            bad = sorted(keys - set(names) - set(_ROLES)) or sorted(keys & set(_ROLES))
            self._fail(
                f"proportions.{bad[0]}",
                f"keys must be all roles ({', '.join(_ROLES)}) or all type names of this env ({', '.join(names)})",
            )
        total = sum(shares.values())
        return {k: v / total for k, v in shares.items() if v > 0}


# ------------------------------------------------------------------------------------------- crowd
@dataclass
class SimulatedCrowd:
    """A crowd of simulated annotators over D_tau, in the core's format and as flat arrays.

    ``crowd``: core :class:`~safecrowd_llm.core.data.Crowd`; each set's sides are ``(n, T, obs_dim +
    act_dim)`` = concat(obs, act) per step and its ``ids`` are rows of ``pairs``. ``pairs (P, 2)`` are
    segment starts into the :class:`OfflineData` (side a, side b); ``labels (P,)`` 1 = a preferred (0.5
    tie); ``annotator (P,)`` annotator index; ``safety_labels (P,)`` 1 if a has the lower segment cost,
    0 if b, 0.5 if equal (for SOPL only); ``returns (P, 2)`` each side's true segment return under its
    annotator's reward; ``annotator_goals`` the true goal z of each annotator.
    """

    env_id: str
    spec: CrowdSpec
    crowd: Any  # safecrowd_llm.core.data.Crowd
    pairs: np.ndarray
    labels: np.ndarray
    annotator: np.ndarray
    annotator_types: list[str]
    safety_labels: np.ndarray
    returns: np.ndarray | None = None
    annotator_goals: list[Goal] = field(default_factory=list)

    @property
    def segment_length(self) -> int:
        return self.spec.segment_length

    def type_counts(self) -> dict[str, int]:
        return {t: self.annotator_types.count(t) for t in dict.fromkeys(self.annotator_types)}


def _allocate(shares: dict[str, float], n: int) -> list[str]:
    """Largest-remainder allocation of ``n`` annotators to types (every type with a share gets >= 1 if n allows)."""
    names = list(shares)
    exact = np.array([shares[k] * n for k in names])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero(
        counts == 0
    ):  # a minority type never vanishes from a crowd large enough to hold it
        j = int(np.argmax(counts))
        if counts[j] > 1:
            counts[i], counts[j] = 1, counts[j] - 1
    return [name for name, c in zip(names, counts, strict=True) for _ in range(c)]


def segment_returns(
    data: OfflineData, starts: np.ndarray, length: int, utype: UserType, goal: Goal, K: float
) -> np.ndarray:
    """Segment return ``sum_t r_user + r_share`` for each start, ``(M,)``."""
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)[None, :]  # (M, T)
    missing = [k for k in _needed_features(utype) if k not in data.features]
    if missing:
        raise KeyError(
            f"{data.env_id}: user type {utype.name!r} needs features {missing}; D_tau has {sorted(data.features)}"
        )
    feats = {k: v[idx].astype(np.float64) for k, v in data.features.items()}
    r_user = utype.reward(feats, goal)
    r_share = -K * (data.cost[idx] > 0)
    return (r_user + r_share).sum(axis=1)


def _needed_features(utype: UserType) -> list[str]:
    probe: dict[str, np.ndarray] = {}

    class _Rec(dict):
        def __missing__(self, key: str) -> np.ndarray:
            probe[key] = np.zeros((1, 1))
            return probe[key]

    utype.reward(_Rec(), {k: 0.0 for k in utype.goals})
    return sorted(probe)


def make_crowd(data: OfflineData, spec: CrowdSpec) -> SimulatedCrowd:
    """Draw annotators (types by ``spec.proportions``, then goals), their segment pairs and noisy BT labels."""
    import torch

    from safecrowd_llm.core.data import Crowd, PreferenceSet

    T = spec.segment_length
    starts = data.segment_starts(T)
    if len(starts) < 2:
        raise ValueError(f"{data.env_id}: D_tau has {len(starts)} segments of length {T}; need >= 2 "
                         f"(crowd spec {spec.source}: lower 'segment_length' or generate more data)")  # fmt: skip
    types = {t.name: t for t in spec.user_types(data.env_id)}
    rng = np.random.default_rng(spec.seed)
    annotator_types = _allocate(spec.type_shares(data.env_id), spec.num_annotators)
    annotator_types = [annotator_types[i] for i in rng.permutation(len(annotator_types))]
    steps_cost = np.concatenate([[0.0], np.cumsum(data.cost, dtype=np.float64)])
    feats_np = np.concatenate([data.obs, data.act], axis=1)  # (N, obs_dim + act_dim)
    n_pairs = spec.pairs_per_annotator
    pairs, labels, annot, safety, returns, goals, sets = [], [], [], [], [], [], []
    for k, tname in enumerate(annotator_types):
        utype = types[tname]
        goal = utype.draw(rng)
        a = starts[rng.integers(len(starts), size=n_pairs)]
        b = starts[
            (np.searchsorted(starts, a) + rng.integers(1, len(starts), size=n_pairs)) % len(starts)
        ]  # b != a
        ra = segment_returns(data, a, T, utype, goal, spec.K)
        rb = segment_returns(data, b, T, utype, goal, spec.K)
        if spec.temperature > 0:
            p = 1.0 / (1.0 + np.exp(-np.clip((ra - rb) / spec.temperature, -60, 60)))
            y = (rng.random(n_pairs) < p).astype(np.float32)
        else:
            y = np.where(ra > rb, 1.0, np.where(ra < rb, 0.0, 0.5)).astype(np.float32)
        flip = rng.random(n_pairs) < spec.flip_prob
        y = np.where(flip, 1.0 - y, y).astype(np.float32)
        ca, cb = steps_cost[a + T] - steps_cost[a], steps_cost[b + T] - steps_cost[b]
        rows = np.arange(k * n_pairs, (k + 1) * n_pairs)
        idx_a, idx_b = a[:, None] + np.arange(T), b[:, None] + np.arange(T)
        sets.append(PreferenceSet(f"{tname}-{k:04d}", torch.from_numpy(feats_np[idx_a]), torch.from_numpy(feats_np[idx_b]),
                                  torch.from_numpy(y), ids=torch.from_numpy(rows)))  # fmt: skip
        pairs.append(np.stack([a, b], 1))
        labels.append(y)
        annot.append(np.full(n_pairs, k, dtype=np.int64))
        safety.append(np.where(ca < cb, 1.0, np.where(ca > cb, 0.0, 0.5)).astype(np.float32))
        returns.append(np.stack([ra, rb], 1))
        goals.append(goal)
    return SimulatedCrowd(
        env_id=data.env_id,
        spec=spec,
        crowd=Crowd.from_sets(sets),
        pairs=np.concatenate(pairs).astype(np.int64),
        labels=np.concatenate(labels),
        annotator=np.concatenate(annot),
        annotator_types=annotator_types,
        safety_labels=np.concatenate(safety),
        returns=np.concatenate(returns).astype(np.float32),
        annotator_goals=goals,
    )


def label_stats(crowd: SimulatedCrowd, data: OfflineData) -> dict[str, dict[str, float]]:
    """How much of the shared principle the labels carry, for the whole crowd (``"all"``) and per user type.

    Per group: ``pairs``; ``differ`` the fraction of pairs whose two segments differ in costly steps (only these
    say anything about safety); ``follows_safer`` among them, the fraction labelled for the safer segment;
    ``conflict`` the fraction of pairs where the annotator's own goal (r_user alone) prefers the costlier segment,
    and ``follows_safer_in_conflict`` how often the label still picks the safer one there. A crowd whose labels
    rarely differ in cost, or always agree with the users' goals anyway, cannot teach the principle.
    """
    if crowd.returns is None:
        raise ValueError(f"{crowd.env_id}: the crowd has no per-pair returns (made by make_crowd it always has)")
    T = crowd.segment_length
    costly = np.concatenate([[0], np.cumsum(data.cost > 0)])
    n = costly[crowd.pairs + T] - costly[crowd.pairs]  # (P, 2) costly steps per side
    user = crowd.returns + crowd.spec.K * n  # r_user alone
    differ = n[:, 0] != n[:, 1]
    a_safer = n[:, 0] < n[:, 1]
    follows = (crowd.labels > 0.5) == a_safer
    conflict = differ & (user[:, 0] != user[:, 1]) & ((user[:, 0] > user[:, 1]) != a_safer)
    types = np.asarray(crowd.annotator_types)[crowd.annotator]

    def frac(mask: np.ndarray, within: np.ndarray) -> float:
        return float(mask[within].mean()) if within.any() else float("nan")

    out = {}
    for name in ["all", *dict.fromkeys(crowd.annotator_types)]:
        g = np.ones(len(types), bool) if name == "all" else types == name
        out[name] = {"pairs": int(g.sum()), "differ": frac(differ, g), "follows_safer": frac(follows, g & differ),
                     "conflict": frac(conflict, g), "follows_safer_in_conflict": frac(follows, g & conflict)}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m control.crowd --envs Reach --profile paper``: draw each env's crowd over its cached D_tau and
    print :func:`label_stats` (generates D_tau first if it is not cached)."""
    import argparse

    from control.offline import load_or_generate
    from control.profiles import PROFILES, get_profile

    p = argparse.ArgumentParser(prog="python -m control.crowd", description=main.__doc__.split("\n\n")[0])
    p.add_argument("--envs", nargs="+", default=["Run", "Circle", "Reach", "HalfCheetah-vel", "Hopper-vel", "Swimmer-vel"])
    p.add_argument("--profile", default="quick", choices=list(PROFILES))
    p.add_argument("--crowd", type=Path, default=Path(__file__).parent / "crowds" / "balanced.yaml", help="crowd spec YAML")
    p.add_argument("--seed", type=int, default=0, help="added to the crowd's seed, as the benchmark does per seed")
    p.add_argument("--root", type=Path, default=Path("runs/control/data"), help="D_tau cache")
    args = p.parse_args(argv)
    spec = CrowdSpec.from_yaml(args.crowd)
    spec = spec.with_overrides(seed=spec.seed + args.seed)
    print("| env | group | pairs | differ in cost | label follows safer | goal prefers costlier | label follows safer there |")
    print("|---|---|---|---|---|---|---|")
    for env in args.envs:
        data = load_or_generate(env, get_profile(args.profile), args.root)
        crowd = make_crowd(data, spec)
        for name, s in label_stats(crowd, data).items():
            print(f"| {crowd.env_id} | {name} | {s['pairs']} | {s['differ']:.3f} | {s['follows_safer']:.3f} "
                  f"| {s['conflict']:.3f} | {s['follows_safer_in_conflict']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
