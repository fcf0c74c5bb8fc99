"""Open-loop sinusoid gaits for the MuJoCo velocity envs, with an amplitude "speed dial".

A gait is ``a_j(t) = clip(alpha * amp_j * sin(2 pi freq t + phase_j) + bias_j, -1, 1)``; one shared
frequency, per-joint amplitude/phase/bias. Scaling ``alpha`` moves the forward speed smoothly, so an
integral controller on ``alpha`` tracks a target speed (FINDINGS.md: HalfCheetah tracks 1..4 m/s within
0.02). :func:`hill_climb` finds a gait by (1+1) random search on the forward distance of short rollouts;
the constants in :data:`GAITS` are its output (seeds and budgets in each entry's ``note``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GAITS", "GaitController", "SinusoidGait", "hill_climb", "speed_curve"]


@dataclass(frozen=True)
class SinusoidGait:
    """One shared-frequency sinusoid gait and its measured speed dial.

    ``dial`` holds measured (alpha, mean forward speed) points, increasing, used to start the integral
    controller near the right amplitude; ``integral_gain`` is its gain per step (alpha per m/s error).
    """

    freq: float
    amp: tuple[float, ...]
    phase: tuple[float, ...]
    bias: tuple[float, ...]
    dial: tuple[tuple[float, float], ...] = ((0.0, 0.0), (1.0, 1.0))
    integral_gain: float = 0.002
    max_alpha: float = 1.5
    steer_joint: int | None = None  # joint whose bias steers the heading back to +x (Swimmer drifts)
    steer_gain: float = 0.0
    note: str = ""

    def action(self, t: float, alpha: float, heading: float = 0.0) -> np.ndarray:
        amp, phase, bias = np.asarray(self.amp), np.asarray(self.phase), np.array(self.bias, dtype=np.float64)
        if self.steer_joint is not None:
            bias[self.steer_joint] += self.steer_gain * heading
        return np.clip(alpha * amp * np.sin(2 * np.pi * self.freq * t + phase) + bias, -1.0, 1.0)

    def alpha_for(self, speed: float) -> float:
        """Amplitude expected to give ``speed`` (linear interpolation of the measured dial)."""
        alphas, speeds = zip(*self.dial, strict=True)
        return float(np.clip(np.interp(speed, speeds, alphas), 0.0, self.max_alpha))


class GaitController:
    """Runs a gait on one MuJoCo env episode: fixed amplitude ``alpha``, or (with ``speed``) an integral
    controller on the amplitude that tracks that forward speed. Reads x and heading from ``data.qpos``."""

    def __init__(
        self, gait: SinusoidGait, env: object, speed: float | None = None, alpha: float | None = None
    ) -> None:
        self.gait, self.speed = gait, speed
        self.data, self.dt = env.unwrapped.data, env.unwrapped.dt
        self.alpha = alpha if alpha is not None else gait.alpha_for(speed or 0.0)
        self.t, self.heading = 0, 0.0
        self.x = float(self.data.qpos[0])

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = float(self.data.qpos[0])
        if self.speed is not None and self.t > 0:
            error = self.speed - (x - self.x) / self.dt
            self.alpha = float(
                np.clip(self.alpha + self.gait.integral_gain * error, 0.0, self.gait.max_alpha)
            )
        self.x = x
        self.heading = 0.95 * self.heading + 0.05 * float(self.data.qpos[2])  # low-passed body angle
        action = self.gait.action(self.t * self.dt, self.alpha, self.heading)
        self.t += 1
        return action


def _distance(env_id: str, gait: SinusoidGait, alpha: float, steps: int, seed: int) -> tuple[float, bool]:
    """Forward distance (m) of one open-loop rollout and whether it terminated early."""
    from control.envs import make_env

    env = make_env(env_id, seed)
    env.reset(seed=seed)
    x0 = float(env.unwrapped.data.qpos[0])
    dt = env.unwrapped.dt
    fell = False
    for t in range(steps):
        _, _, terminated, _, _ = env.step(gait.action(t * dt, alpha).astype(np.float32))
        if terminated:
            fell = True
            break
    x1 = float(env.unwrapped.data.qpos[0])
    env.close()
    return x1 - x0, fell


def hill_climb(env_id: str, iterations: int = 400, steps: int = 300, seed: int = 0,
               freq_range: tuple[float, float] = (0.5, 4.0),
               init: SinusoidGait | None = None,
               allow_fall: bool = False) -> tuple[SinusoidGait, float]:  # fmt: skip
    """(1+1) random search for the gait that travels furthest in ``steps`` steps (falling = -inf),
    from a random gait or from ``init``. With ``allow_fall`` a fall ends the rollout but keeps its distance
    (Hopper: no open-loop gait stays up, so it finds the furthest lunge)."""
    from control.envs import make_env

    env = make_env(env_id, seed)
    n = env.action_space.shape[0]
    env.close()
    rng = np.random.default_rng(seed)
    best = SinusoidGait(float(rng.uniform(*freq_range)), tuple(rng.uniform(0.2, 1.0, n)),
                        tuple(rng.uniform(-np.pi, np.pi, n)), tuple(np.zeros(n)))  # fmt: skip
    best = init or best
    best_d = -np.inf
    for it in range(iterations):
        scale = 0.3 * (1 - it / iterations) + 0.05
        cand = best if it == 0 else SinusoidGait(
            float(np.clip(best.freq + rng.normal(0, scale), *freq_range)),
            tuple(np.clip(np.asarray(best.amp) + rng.normal(0, scale, n), 0.0, 1.0)),
            tuple(np.asarray(best.phase) + rng.normal(0, 2 * scale, n)),
            tuple(np.clip(np.asarray(best.bias) + rng.normal(0, scale / 2, n), -0.5, 0.5)),
        )  # fmt: skip
        d, fell = _distance(env_id, cand, 1.0, steps, seed)
        if fell and not allow_fall:
            d = -np.inf
        if d > best_d:
            best, best_d = cand, d
    return best, best_d


def speed_curve(env_id: str, gait: SinusoidGait, alphas: list[float], steps: int = 500,
                seed: int = 0) -> list[tuple[float, float]]:  # fmt: skip
    """Measured (alpha, mean speed over the second half) for each amplitude (for the ``dial``)."""
    from control.envs import make_env

    out = []
    for alpha in alphas:
        env = make_env(env_id, seed)
        obs, _ = env.reset(seed=seed)
        controller, xs = GaitController(gait, env, alpha=alpha), []
        for _ in range(steps):
            obs, *_ = env.step(controller(obs).astype(np.float32))
            xs.append(float(env.unwrapped.data.qpos[0]))
        env.close()
        half = steps // 2
        out.append((alpha, (xs[-1] - xs[half]) / ((steps - 1 - half) * env.unwrapped.dt)))
    return out


GAITS: dict[str, SinusoidGait] = {
    "SafetyHalfCheetahVelocity-v1": SinusoidGait(
        freq=3.8900,
        amp=(0.9873, 1.0, 0.8177, 0.7983, 0.9040, 0.7655),
        phase=(-2.4912, -1.4192, -3.9280, -0.7561, 0.0919, -0.7079),
        bias=(-0.2130, -0.3872, -0.2415, -0.3045, -0.3614, 0.0158),
        dial=((0.0, 0.0), (0.3, 0.69), (0.5, 1.71), (0.7, 2.66), (0.85, 3.27), (1.0, 3.82)),
        integral_gain=0.002,
        max_alpha=1.05,
        note="hill_climb(iterations=500, steps=250, seed=1) then hill_climb(300, 250, seed=5, freq_range=(1, 8)) "
        "from it: 44.9 m in 250 steps; 3.82 m/s at alpha 1.0, flips over above alpha 1.15",
    ),
    "SafetyHopperVelocity-v1": SinusoidGait(
        freq=3.1140,
        amp=(0.2202, 0.2431, 0.1000),
        phase=(-0.2111, 4.7571, 1.3842),
        bias=(0.0142, 0.2804, 0.1755),
        note="hill_climb(300, 200, seed=0, allow_fall=True): no open-loop gait stays up; this lunge runs at "
        "~0.9-1.3 m/s for 40-90 steps, then falls (episode terminates)",
    ),
    "SafetySwimmerVelocity-v1": SinusoidGait(
        freq=0.55,
        amp=(1.0, 1.0),
        phase=(0.0, 5.7596),
        bias=(0.0, 0.0),
        dial=((0.2, 0.0), (0.35, 0.159), (0.5, 0.228), (0.7, 0.269), (1.0, 0.298)),
        integral_gain=0.02,
        max_alpha=1.0,
        steer_joint=0,
        steer_gain=1.0,
        note="grid over freq x phase lag at alpha 3 (clipped), then heading feedback on joint 0; plateaus at ~0.3 m/s",
    ),
}
