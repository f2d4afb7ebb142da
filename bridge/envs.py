"""Gymnasium environments for callers on the BEAM (`DQNBridge.Env.Gym`), one per handle.

Only ids already in gymnasium's registry can be made: an id of the form
"some.module:Env" would make gymnasium import code named by the caller.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["GymEnv", "check_registered", "registered_ids"]


def _gym():
    import gymnasium  # imported on first use: `serve` answers ping before gymnasium loads

    return gymnasium


def registered_ids() -> list[str]:
    """Every id `GymEnv` accepts."""
    return sorted(_gym().envs.registry)


def check_registered(env_id: str) -> None:
    """Raise ValueError unless `env_id` is in gymnasium's registry (no module:Env ids)."""
    registry = _gym().envs.registry
    if ":" in env_id or env_id not in registry:
        stem = env_id.split("-")[0].lower()
        near = sorted(i for i in registry if stem and stem in i.lower())[:5]
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise ValueError(f"env id {env_id!r} is not a registered gymnasium env; {hint}"
                         "only registered ids are accepted (e.g. CartPole-v1)")


class GymEnv:
    """A gymnasium env with a flat Box observation and Discrete actions.

    Args:
      env_id: a registered id such as "CartPole-v1".
      max_episode_steps: overrides the registered time limit (None keeps it).
    """

    def __init__(self, env_id: str, max_episode_steps: int | None = None):
        gym = _gym()
        check_registered(env_id)
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be a positive integer or nil, "
                             f"got {max_episode_steps}")
        env = gym.make(env_id, max_episode_steps=max_episode_steps)
        obs_space, act_space = env.observation_space, env.action_space
        if not isinstance(act_space, gym.spaces.Discrete) or \
                not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            env.close()
            raise ValueError(f"env {env_id!r} has observation space {obs_space} and action space "
                             f"{act_space}; only a flat Box observation with Discrete actions "
                             "is supported")
        self.env = env
        self.env_id = env_id
        self.n_actions = int(act_space.n)
        self.obs_dim = int(obs_space.shape[0])
        self._needs_reset = True

    def spec(self) -> dict[str, Any]:
        """{"id", "obs_dim", "obs_shape", "n_actions", "max_episode_steps", "reward_threshold"}."""
        spec = self.env.spec
        threshold = spec.reward_threshold if spec is not None else None
        return {
            "id": self.env_id,
            "obs_dim": self.obs_dim,
            "obs_shape": [self.obs_dim],
            "n_actions": self.n_actions,
            "max_episode_steps": spec.max_episode_steps if spec is not None else None,
            "reward_threshold": float(threshold) if threshold is not None else None,
        }

    def reset(self, seed: int | None = None) -> list[float]:
        """Start an episode; returns the first observation."""
        obs, _ = self.env.reset(seed=seed)
        self._needs_reset = False
        return self._obs_list(obs)

    def step(self, action: int) -> tuple[list[float], float, bool, bool]:
        """(next observation, reward, terminated, truncated) after `action`."""
        if self._needs_reset:
            raise ValueError(f"env {self.env_id} must be reset before stepping "
                             "(its episode ended, or it was never reset)")
        if not 0 <= action < self.n_actions:
            raise ValueError(f"action {action} is out of range; allowed actions are "
                             f"0..{self.n_actions - 1}")
        obs, reward, terminated, truncated, _ = self.env.step(action)
        self._needs_reset = bool(terminated or truncated)
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"env {self.env_id} returned the non-finite reward {reward}")
        return self._obs_list(obs), reward, bool(terminated), bool(truncated)

    def close(self) -> None:
        self.env.close()

    def _obs_list(self, obs) -> list[float]:
        values = np.asarray(obs, dtype=np.float64).reshape(-1).tolist()
        if not all(map(math.isfinite, values)):
            raise ValueError(f"env {self.env_id} returned a non-finite observation {values}")
        return values
