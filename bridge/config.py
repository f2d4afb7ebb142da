"""DQNConfig: the one source of truth for options, defaults and validation.

Every way in (the CLI, the port's `new_agent`, the Elixir `config:` option) builds its
config through `DQNConfig.from_mapping`, so a typo or a wrong type is refused the same
way everywhere, with a message that names the key and lists what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

_CHOICES: dict[str, tuple[str, ...]] = {
    "loss": ("huber", "mse"),
    "optimizer": ("adam", "rmsprop", "adamw"),
    "target_update": ("hard", "soft"),
    "eps_schedule": ("linear", "exponential"),
}


@dataclass(frozen=True)
class DQNConfig:
    """Hyper-parameters of one DQN agent. Defaults solve CartPole-v1 quickly on a CPU."""

    env_id: str = "CartPole-v1"  # gymnasium id; also gives obs_dim/n_actions when those are unset
    seed: int = 0  # seeds network init, exploration and replay sampling
    obs_dim: int | None = None  # observation size; None = read from env_id's observation space
    n_actions: int | None = None  # number of discrete actions; None = read from env_id
    hidden_sizes: tuple[int, ...] = (64, 64)  # widths of the MLP's hidden layers
    dueling: bool = False  # split the head into value and advantage streams
    double_dqn: bool = True  # pick the bootstrap action with the online net, value it with the target net
    loss: str = "huber"  # TD loss: huber | mse
    optimizer: str = "adam"  # adam | rmsprop | adamw
    lr: float = 2.5e-3  # learning rate
    max_grad_norm: float = 10.0  # global gradient-norm clip; 0 disables clipping
    gamma: float = 0.99  # discount factor
    n_step: int = 3  # n-step returns (1 = plain one-step TD)
    batch_size: int = 128  # transitions per gradient step
    buffer_size: int = 50_000  # replay capacity in transitions
    learning_starts: int = 500  # env steps collected before the first gradient step
    train_freq: int = 1  # vector steps (fused `step` calls, one per env step of all slots) between training rounds
    gradient_steps: int = 1  # gradient steps per training round
    target_update: str = "hard"  # hard (copy every target_update_interval updates) | soft (Polyak, tau)
    target_update_interval: int = 100  # gradient steps between hard target copies
    tau: float = 0.005  # Polyak factor for soft target updates
    eps_schedule: str = "linear"  # linear | exponential: eps_end + (eps_start - eps_end) * exp(-step / eps_decay)
    eps_start: float = 1.0  # epsilon at step 0
    eps_end: float = 0.02  # final epsilon
    eps_decay_steps: int = 3_000  # linear schedule: steps to go from eps_start to eps_end
    eps_decay: float = 1_500.0  # exponential schedule: time constant in env steps
    prioritized: bool = False  # prioritized experience replay (sum tree)
    per_alpha: float = 0.6  # PER: priority exponent
    per_beta: float = 0.4  # PER: initial importance-sampling exponent, annealed to 1
    per_beta_steps: int = 20_000  # PER: env steps to anneal beta to 1
    per_eps: float = 1e-6  # PER: added to |TD error| so no priority is zero

    # ------------------------------------------------------------------ building

    @classmethod
    def from_mapping(cls, mapping: Mapping[Any, Any] | None = None, **overrides: Any) -> "DQNConfig":
        """Build a config from a mapping whose keys may be str, bytes or atom-like.

        A keyword list (a list of 2-tuples) is accepted too, as the BEAM sends it.

        >>> DQNConfig.from_mapping({b"lr": 3e-4, "gamma": 0.98}).lr
        0.0003
        >>> DQNConfig.from_mapping({"lr ": 1})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown config key 'lr '; allowed keys: ...
        """
        config = cls(**cls._values(mapping, overrides))
        config.validate()
        return config

    @classmethod
    def for_env(cls, mapping: Mapping[Any, Any] | None = None, **overrides: Any) -> "DQNConfig":
        """Like `from_mapping`, with the tuned preset of its env_id filling the fields it leaves unset.

        >>> DQNConfig.for_env({"env_id": "Acrobot-v1", "lr": 1e-3}).hidden_sizes
        (128, 128)
        """
        given = cls._values(mapping, overrides)
        env_id = given.get("env_id", cls.env_id)
        return cls.from_mapping({**PRESETS.get(env_id, {}), **given})

    @classmethod
    def _values(cls, mapping: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """{field name: coerced value} for each key given; raises naming an unknown key or a bad value."""
        items: list[tuple[Any, Any]] = []
        if mapping is None:
            pass
        elif isinstance(mapping, Mapping):
            items.extend(mapping.items())
        elif isinstance(mapping, (list, tuple)) and all(isinstance(p, tuple) and len(p) == 2 for p in mapping):
            items.extend(mapping)
        else:
            raise ValueError(f"config must be a map or a keyword list, got {type(mapping).__name__}: {mapping!r:.80}")
        items.extend(overrides.items())
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for raw_key, raw_value in items:
            key = _key_to_str(raw_key)
            if key not in known:
                raise ValueError(f"unknown config key {key!r}; allowed keys: {', '.join(known)}")
            values[key] = _coerce(key, known[key].default, raw_value)
        return values

    def replace(self, **changes: Any) -> "DQNConfig":
        """A copy with `changes` applied and checked like `from_mapping`."""
        return DQNConfig.from_mapping(self.to_dict(), **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain built-in values only (lists, not tuples), ready for JSON or msgpack."""
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out

    # ---------------------------------------------------------------- validation

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value is out of range."""
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"config {key}={getattr(self, key)!r} is not allowed; use one of: {', '.join(allowed)}")
        positive = ("lr", "batch_size", "buffer_size", "train_freq", "gradient_steps", "n_step",
                    "target_update_interval", "eps_decay_steps", "eps_decay", "per_beta_steps")
        for key in positive:
            if not getattr(self, key) > 0:
                raise ValueError(f"config {key}={getattr(self, key)!r} must be > 0")
        unit = ("gamma", "eps_start", "eps_end", "per_alpha", "per_beta")
        for key in unit:
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"config {key}={getattr(self, key)!r} must be within [0, 1]")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"config tau={self.tau!r} must be within (0, 1]")
        for key in ("max_grad_norm", "learning_starts"):
            if getattr(self, key) < 0:
                raise ValueError(f"config {key}={getattr(self, key)!r} must be >= 0")
        if not self.per_eps > 0:
            raise ValueError(f"config per_eps={self.per_eps!r} must be > 0")
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"config hidden_sizes={list(self.hidden_sizes)!r} must be a non-empty list of positive ints")
        for key in ("obs_dim", "n_actions"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"config {key}={value!r} must be a positive int or nil")
        if self.n_actions is not None and self.n_actions < 2:
            raise ValueError(f"config n_actions={self.n_actions!r} must be >= 2")
        if self.batch_size > self.buffer_size:
            raise ValueError(f"config batch_size={self.batch_size} must not exceed buffer_size={self.buffer_size}")

    def epsilon(self, step: int) -> float:
        """Exploration rate after `step` env steps, from the configured schedule."""
        if self.eps_schedule == "linear":
            frac = min(1.0, step / self.eps_decay_steps)
            return self.eps_start + frac * (self.eps_end - self.eps_start)
        return self.eps_end + (self.eps_start - self.eps_end) * math.exp(-step / self.eps_decay)


PRESETS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {},
    "Acrobot-v1": {"hidden_sizes": (128, 128), "gamma": 0.99, "eps_decay_steps": 20_000,
                   "learning_starts": 2_000, "target_update_interval": 500},
    "MountainCar-v0": {"hidden_sizes": (128, 128), "lr": 4e-3, "gamma": 0.98, "eps_end": 0.07,
                       "eps_decay_steps": 24_000, "learning_starts": 1_000, "train_freq": 16,
                       "gradient_steps": 8, "target_update_interval": 75, "batch_size": 128},
    "LunarLander-v3": {"hidden_sizes": (256, 256), "lr": 6.3e-4, "batch_size": 128, "buffer_size": 100_000,
                       "learning_starts": 5_000, "eps_decay_steps": 25_000, "eps_end": 0.1,
                       "target_update_interval": 250, "train_freq": 4},
}


def preset(env_id: str, **overrides: Any) -> DQNConfig:
    """The tuned defaults for `env_id` (plain defaults for an env without a preset)."""
    return DQNConfig.for_env({"env_id": env_id}, **overrides)


# ------------------------------------------------------------------- coercion

def _key_to_str(key: Any) -> str:
    if isinstance(key, str):
        return str(key)
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).decode("utf-8", "replace")
    if isinstance(key, list) and all(isinstance(c, int) for c in key):
        return "".join(map(chr, key))
    raise ValueError(f"config key must be an atom or a string, got {type(key).__name__}: {key!r:.80}")


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return None


def _coerce(key: str, default: Any, value: Any) -> Any:
    """Turn a wire value into the field's type, or raise naming the key and the expected type."""
    text = _text(value)
    if key in ("obs_dim", "n_actions"):
        if value is None or text == "nil":
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise ValueError(f"config {key} must be a positive integer or nil, got {value!r:.80}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if text in ("true", "false"):
            return text == "true"
        raise ValueError(f"config {key} must be true or false, got {value!r:.80}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"config {key} must be an integer, got {value!r:.80}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ValueError(f"config {key} must be a finite number, got {value!r:.80}")
    if isinstance(default, str):
        if text is not None:
            return text
        if isinstance(value, list) and value and all(isinstance(c, int) and 0 < c < 0x110000 for c in value):
            return "".join(map(chr, value))  # an Erlang charlist
        raise ValueError(f"config {key} must be a string, got {value!r:.80}")
    if isinstance(default, tuple):  # hidden_sizes
        if isinstance(value, (bytes, bytearray)):  # [64, 64] travels as an Erlang string (STRING_EXT)
            value = list(value)
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(int(v) for v in value)
        raise ValueError(f"config {key} must be a list of integers, got {value!r:.80}")
    raise AssertionError(f"no coercion for field {key}")  # a new field type needs a branch above
