"""Control track: the paper's safe-RL benchmark on Bullet-Safety-Gym and Safety-Gymnasium.

Kept import-light: nothing here imports gymnasium, the simulators or torch. Use
``from control.envs import make_env`` (which installs :mod:`control.compat` when needed).
"""

__all__: list[str] = []
