"""Agent: TrainState + replay + counters + RNG, driven from outside.

The caller owns the environment (an Elixir process, a gymnasium env, anything) and drives
the agent with `act` / `observe` / `optimize`, or with the fused `step` that does all three
for every env slot in one call. Every method takes one observation or a batch (first axis
= env slot) and checks its input before touching any state, so a refused call changes
nothing.

Randomness: network init uses `jax.random.PRNGKey(seed)`; exploration and replay sampling
use one numpy PCG64 generator seeded with `seed`, whose state goes into checkpoints, so a
resumed run continues bit for bit.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bridge import learner, network
from bridge.config import DQNConfig
from bridge.replay import ReplayBuffer

_F32_MAX = float(np.finfo(np.float32).max)


def _finite_f32(values: tuple[float, ...], length: int) -> bool:
    """Whether `values` are `length` floats that stay finite as float32."""
    if len(values) != length:
        return False
    for v in values:
        if not -_F32_MAX <= v <= _F32_MAX:  # also False for NaN
            return False
    return True


def env_dims(env_id: str) -> tuple[int, int]:
    """(obs_dim, n_actions) of a gymnasium env with a flat Box observation and Discrete actions."""
    import gymnasium as gym

    try:
        env = gym.make(env_id)
    except Exception as exc:  # gymnasium raises several error types for a bad id
        raise ValueError(f"config env_id={env_id!r} is not a gymnasium env ({exc}); "
                         "set obs_dim and n_actions to use an env of your own") from None
    try:
        obs_space, act_space = env.observation_space, env.action_space
        if not isinstance(act_space, gym.spaces.Discrete) or not isinstance(obs_space, gym.spaces.Box) \
                or len(obs_space.shape) != 1:
            raise ValueError(f"env {env_id!r} has observation space {obs_space} and action space {act_space}; "
                             "DQN here needs a flat Box observation and Discrete actions")
        return int(obs_space.shape[0]), int(act_space.n)
    finally:
        env.close()


class Agent:
    """A DQN agent. See the module docstring for how it is driven."""

    def __init__(self, config: DQNConfig | Mapping[Any, Any] | None = None):
        if not isinstance(config, DQNConfig):
            config = DQNConfig.from_mapping(config)
        if config.obs_dim is None or config.n_actions is None:
            obs_dim, n_actions = env_dims(config.env_id)
            config = config.replace(obs_dim=config.obs_dim or obs_dim, n_actions=config.n_actions or n_actions)
        self.config = config
        self.obs_dim, self.n_actions = int(config.obs_dim), int(config.n_actions)
        self.layout = network.layout(self.obs_dim, config.hidden_sizes, self.n_actions, config.dueling)
        self.set_state(learner.init_state(config, self.obs_dim, self.n_actions))
        self._train_step = learner.make_train_step(config, self.state, self.layout)
        self.replay = ReplayBuffer(config.buffer_size, self.obs_dim, config.gamma, config.n_step,
                                   config.prioritized, config.per_alpha, config.per_eps)
        self.rng = np.random.Generator(np.random.PCG64(config.seed))
        self.env_steps = 0
        self.episodes = 0
        self.updates = 0
        self.vector_steps = 0  # fused `step` calls that stored transitions; drives train_freq
        self.last_loss: jax.Array | None = None  # device values: read only when asked, never per step
        self.last_q_mean: jax.Array | None = None
        self.prev_obs: dict[int, np.ndarray] = {}  # fused `step`: last observation acted on, per slot
        self.prev_action: dict[int, int] = {}
        self.pending_round = False  # a deferred step's training round is still to run
        self.round_error: Exception | None = None  # how a deferred round failed, until reported

    # --------------------------------------------------------------- schedule

    @property
    def epsilon(self) -> float:
        return self.config.epsilon(self.env_steps)

    @property
    def per_beta(self) -> float:
        c = self.config
        return c.per_beta + (1.0 - c.per_beta) * min(1.0, self.env_steps / c.per_beta_steps)

    # ------------------------------------------------------------- validation

    def _obs(self, obs: Any, name: str = "obs") -> tuple[np.ndarray, bool]:
        """(batch float32 array (n, obs_dim), whether a single observation was given)."""
        try:
            arr = np.asarray(obs, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a list of {self.obs_dim} numbers or a list of such lists, "
                             f"got {_show(obs)}") from None
        if arr.ndim == 1 and arr.shape[0] == self.obs_dim:
            single = True
            arr = arr[None, :]
        elif arr.ndim == 2 and arr.shape[1] == self.obs_dim and arr.shape[0] > 0:
            single = False
        else:
            raise ValueError(f"{name} has shape {list(arr.shape)}; expected [{self.obs_dim}] "
                             f"or [n_envs, {self.obs_dim}]")
        if not np.isfinite(arr).all():
            row = int(np.argwhere(~np.isfinite(arr))[0][0])
            raise ValueError(f"{name} contains a non-finite value (NaN or infinity) at env slot {row}: "
                             f"{arr[row].tolist()}")
        return arr, single

    def _column(self, value: Any, n: int, name: str, dtype: Any) -> np.ndarray:
        """A per-slot column of length n (a scalar applies to every slot)."""
        try:
            arr = np.asarray(value, dtype=np.float64)
            if dtype == np.int64 and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            kind = "an integer action" if dtype == np.int64 else "a number"
            raise ValueError(f"{name} must be {kind} per env slot, got {_show(value)}") from None
        if arr.ndim == 0:
            arr = np.full(n, arr)
        if arr.shape != (n,):
            raise ValueError(f"{name} has shape {list(arr.shape)}; expected one value per env slot ({n})")
        if dtype == np.float64 and not np.isfinite(arr).all():
            raise ValueError(f"{name} contains a non-finite value: {arr.tolist()}")
        if dtype == np.float64 and (np.abs(arr) > _F32_MAX).any():  # replay rows are float32
            raise ValueError(f"{name} holds {float(arr[np.abs(arr) > _F32_MAX][0])!r}, beyond the range of "
                             f"float32 (largest magnitude {_F32_MAX:.6g})")
        if dtype == np.int64 and ((arr < 0) | (arr >= self.n_actions)).any():
            bad = arr[(arr < 0) | (arr >= self.n_actions)][0]  # checked before the cast, which could wrap
            raise ValueError(f"{name} {int(bad)} is out of range; allowed actions are 0..{self.n_actions - 1}")
        return arr.astype(np.int64) if dtype == np.int64 else arr

    @staticmethod
    def _flags(value: Any, n: int, name: str) -> np.ndarray:
        arr = np.asarray(value)
        if arr.ndim == 0:
            arr = np.full(n, arr)
        if arr.shape != (n,) or arr.dtype != np.bool_:
            raise ValueError(f"{name} must be true/false per env slot ({n}), got {_show(value)}")
        return arr

    # ---------------------------------------------------------------- acting

    def act(self, obs: Any, greedy: bool = False) -> int | np.ndarray:
        """Epsilon-greedy actions (greedy when `greedy`).

        Args:
          obs: (obs_dim,) or (n_envs, obs_dim).
          greedy: ignore epsilon (evaluation); consumes no randomness.
        Returns:
          an int for one observation, an int32 array (n_envs,) for a batch.
        """
        batch, single = self._obs(obs)
        actions = self._act(batch, greedy)
        return int(actions[0]) if single else actions

    def act_values(self, values: tuple[float, ...], greedy: bool = False) -> int | None:
        """`act` for one observation given as Python floats, with the checks done in
        Python: the port's fast lane calls it for every `select_action` frame it
        recognises. Returns None, consuming no randomness, when `values` is not an
        observation `act` would accept as is (wrong length, or a value that is not a
        finite float32); `act` then takes it and says what is wrong."""
        if not _finite_f32(values, self.obs_dim):
            return None
        return self._act_one(np.array((values,), dtype=np.float32), self.flat_params, greedy)

    def set_state(self, state: learner.TrainState) -> None:
        """Replace the learner state (used by checkpoint loading)."""
        self.state = state
        self.flat_params = jnp.copy(state.params)  # its own buffer (the train step donates state); see _act
        # What the next `step` acts with: flat_params as they were when the last `step`
        # began, one training round behind (see `_step`).
        self.acting_params = self.flat_params
        self._host: tuple[Any, list | None] = (None, None)  # (flat params, numpy views), last fetched

    def _act(self, batch: np.ndarray, greedy: bool, params: Any = None) -> np.ndarray:
        """Epsilon-greedy actions for a (n, obs_dim) batch, with `params` (flat, on the
        device; default the current `flat_params`).

        Acting runs on the host: a forward pass of a small net in numpy costs a few
        microseconds, a device dispatch tens, and the BEAM waits for every one of them. The
        params are fetched from the device (one transfer) only when they are new.
        """
        n = len(batch)
        explore = random_actions = None
        epsilon = self.epsilon
        if not (greedy or epsilon <= 0.0):
            explore = self.rng.random(n) < epsilon
            random_actions = self.rng.integers(0, self.n_actions, n).astype(np.int32)
            if explore.all():  # no network call at all while exploring
                return random_actions
        host = self._host_params(self.flat_params if params is None else params)
        best = learner.greedy_actions(host, batch, self.config.dueling)
        return best if explore is None else np.where(explore, random_actions, best)

    def _act_one(self, batch: np.ndarray, params: Any, greedy: bool = False) -> int:
        """`_act(batch, greedy, params)` for a batch of one, as an int: the same random
        draws (scalar draws give the values a size-1 draw gives) with less numpy around
        them."""
        epsilon = self.epsilon
        if not (greedy or epsilon <= 0.0):
            explore = self.rng.random() < epsilon
            random_action = int(self.rng.integers(0, self.n_actions))
            if explore:
                return random_action
        return int(learner.greedy_actions(self._host_params(params), batch, self.config.dueling)[0])

    def _host_params(self, flat: Any) -> list:
        """`flat` (params on the device) as numpy arrays: fetched (one transfer) only when
        they are not the ones fetched last."""
        fetched, host = self._host
        if fetched is not flat:
            host = network.unflatten(np.asarray(flat), self.layout)
            self._host = (flat, host)
        return host

    # -------------------------------------------------------------- learning

    def observe(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: Any, truncated: Any) -> None:
        """Store one transition, or a batch with one row per env slot."""
        obs_b, single = self._obs(obs)
        n = len(obs_b)
        next_b, _ = self._obs(next_obs, "next_obs")
        if len(next_b) != n:
            raise ValueError(f"next_obs has {len(next_b)} rows but obs has {n}")
        actions = self._column(action, n, "action", np.int64)
        rewards = self._column(reward, n, "reward", np.float64)
        term, trunc = self._flags(terminated, n, "terminated"), self._flags(truncated, n, "truncated")
        del single
        self._store(range(n), obs_b, actions, rewards, next_b, term, trunc)

    def _store(self, slots, obs, actions, rewards, next_obs, term, trunc) -> None:
        for i, slot in enumerate(slots):
            self.replay.add(slot, obs[i], actions[i], rewards[i], next_obs[i], bool(term[i]), bool(trunc[i]))
            self.env_steps += 1
            self.episodes += bool(term[i] or trunc[i])

    def optimize(self) -> dict[str, float | int] | None:
        """`gradient_steps` updates now, or None while replay holds too little data.

        Returns:
          {"loss", "q_mean", "updates"} of the last update, as Python floats/ints.
        Raises:
          FloatingPointError: the loss diverged (names the update).
        """
        self._raise_round_error()
        if not self._can_train():
            return None
        for _ in range(self.config.gradient_steps):
            self._update()
        return self.last_metrics()

    def _can_train(self) -> bool:
        return len(self.replay) >= self.config.batch_size and self.env_steps >= self.config.learning_starts

    def _update(self) -> None:
        packed, idx = self.replay.sample(self.config.batch_size, self.rng, self.per_beta)
        self.state, self.flat_params, self.last_loss, self.last_q_mean, abs_td = self._train_step(self.state, packed)
        self.updates += 1
        if self.replay.prioritized:
            self.replay.update_priorities(idx, np.asarray(abs_td))

    def last_metrics(self) -> dict[str, float | int] | None:
        """Loss and mean Q of the last update (syncs with the device)."""
        if self.last_loss is None:
            return None
        loss, q_mean = float(self.last_loss), float(self.last_q_mean)
        if not (np.isfinite(loss) and np.isfinite(q_mean)):
            raise FloatingPointError(f"training diverged at update {self.updates}: loss={loss}, q_mean={q_mean}; "
                                     "lower lr or max_grad_norm")
        return {"loss": loss, "q_mean": q_mean, "updates": self.updates}

    def step(self, obs: Any, reward: Any = 0.0, terminated: Any = False, truncated: Any = False,
             final_obs: Any = None) -> int | np.ndarray:
        """Fused observe + train-when-due + act, for every env slot at once.

        Args:
          obs: the observation to act on now, (obs_dim,) or (n_envs, obs_dim). For a slot whose
            episode just ended, the first observation of its next episode.
          reward, terminated, truncated: the outcome of the previous action, per slot.
          final_obs: for slots whose episode just ended, the last observation of that episode
            (rows of other slots are ignored). Needed to bootstrap a truncated episode correctly;
            when absent, `obs` stands in.
        Returns:
          the next action(s), from the params as they were when the previous `step` began
          (one training round behind; see `_step`). A slot's first call only acts.
        """
        batch, single = self._obs(obs)
        n = len(batch)
        rewards = self._column(reward, n, "reward", np.float64)
        term, trunc = self._flags(terminated, n, "terminated"), self._flags(truncated, n, "truncated")
        final = self._obs(final_obs, "final_obs")[0] if final_obs is not None else batch
        if len(final) != n:
            raise ValueError(f"final_obs has {len(final)} rows but obs has {n}")
        if n == 1:
            action = self._step_one(batch, float(rewards[0]), bool(term[0]), bool(trunc[0]), final, False)
            return action if single else np.array([action], np.int32)
        return self._step(batch, rewards, term, trunc, final)

    def step_values(self, values: tuple[float, ...], reward: float, terminated: bool, truncated: bool,
                    final_values: tuple[float, ...] | None = None, defer: bool = False) -> int | None:
        """`step` for one env slot given as Python values, checked in Python: the port's
        fast lane calls it for every `step` frame it recognises. Returns None, having
        changed nothing, when an argument is not one `step` would accept as is (wrong
        length, a value that is not a finite float32, a non-finite reward); `step` then
        takes the call and says what is wrong.

        With `defer`, a training round that is due is not run: `pending_round` is set and
        the caller runs it with `run_pending_round` (the server does, right after sending
        the action, while the BEAM steps its env)."""
        if not _finite_f32(values, self.obs_dim) or not -_F32_MAX <= reward <= _F32_MAX:
            return None
        batch = np.array((values,), dtype=np.float32)
        if final_values is None:
            final = batch
        elif _finite_f32(final_values, self.obs_dim):
            final = np.array((final_values,), dtype=np.float32)
        else:
            return None
        return self._step_one(batch, reward, terminated, truncated, final, defer)

    def step_rows(self, rows: tuple[tuple[float, ...], ...], rewards: tuple[float, ...],
                  terminated: tuple[bool, ...], truncated: tuple[bool, ...],
                  final_rows: tuple[tuple[float, ...], ...] | None = None,
                  defer: bool = False) -> list[int] | None:
        """`step` for a batch of env slots given as Python values (one entry per slot),
        checked in Python: the port's fast lane calls it for every multi-slot `step` frame
        it recognises. Returns the actions as a list (a batch of one too), or None,
        having changed nothing, when an argument is not one `step` would accept as is;
        `step` then takes the call and says what is wrong. `defer` as in `step_values`."""
        n = len(rows)
        if not len(terminated) == len(truncated) == n or not _finite_f32(rewards, n) \
                or (final_rows is not None and len(final_rows) != n):
            return None
        for row in rows:
            if not _finite_f32(row, self.obs_dim):
                return None
        if final_rows is not None:
            for row in final_rows:
                if not _finite_f32(row, self.obs_dim):
                    return None
        batch = np.array(rows, dtype=np.float32)
        final = batch if final_rows is None else np.array(final_rows, dtype=np.float32)
        if n == 1:  # as `step` does
            return [self._step_one(batch, rewards[0], terminated[0], truncated[0], final, defer)]
        return self._step(batch, np.array(rewards), np.array(terminated), np.array(truncated), final,
                          defer).tolist()

    def _step(self, batch: np.ndarray, rewards: np.ndarray, term: np.ndarray, trunc: np.ndarray,
              final: np.ndarray, defer: bool = False) -> np.ndarray:
        """`step` on checked arrays, one row per env slot (`_step_one` for one slot). With
        `defer`, a training round that is due is left to `run_pending_round`."""
        self._raise_round_error()
        n = len(batch)
        slots = [i for i in range(n) if i in self.prev_obs]
        train_now = False
        if slots:
            done = term | trunc
            next_obs = np.where(done[:, None], final, batch)
            self._store(slots, [self.prev_obs[i] for i in slots], [self.prev_action[i] for i in slots],
                        rewards[slots], next_obs[slots], term[slots], trunc[slots])
            # train_freq counts vector steps (one per call, whatever the number of slots), as in
            # Stable-Baselines3: N envs collect N transitions per training round.
            self.vector_steps += 1
            train_now = self.vector_steps % self.config.train_freq == 0
        # The action comes from the params as they were when the previous `step` began: one
        # training round behind. That round has had a whole env step to compute, so acting
        # never waits for the device, and this call's round can be dispatched after the
        # action is known (after the reply, through the port: see `step_values`). Random
        # numbers are drawn in the same order either way: exploration, then replay sampling.
        acting, self.acting_params = self.acting_params, self.flat_params
        actions = self._act(batch, greedy=False, params=acting)
        for i in range(n):
            self.prev_obs[i], self.prev_action[i] = batch[i], int(actions[i])
        self._round_if_due(train_now, defer)
        return actions

    def _step_one(self, batch: np.ndarray, reward: float, terminated: bool, truncated: bool, final: np.ndarray,
                  defer: bool) -> int:
        """`_step` for one env slot (slot 0), on Python scalars: the same transitions,
        random draws and action, without the per-slot array bookkeeping. With `defer`, a
        training round that is due is left to `run_pending_round` (`pending_round` says so)."""
        self._raise_round_error()
        train_now = False
        prev = self.prev_obs.get(0)
        if prev is not None:
            done = terminated or truncated
            self.replay.add(0, prev, self.prev_action[0], reward, final[0] if done else batch[0], terminated,
                            truncated)
            self.env_steps += 1
            self.episodes += done
            self.vector_steps += 1
            train_now = self.vector_steps % self.config.train_freq == 0
        acting, self.acting_params = self.acting_params, self.flat_params  # see `_step`
        action = self._act_one(batch, acting)
        self.prev_obs[0], self.prev_action[0] = batch[0], action
        self._round_if_due(train_now, defer)
        return action

    def _round_if_due(self, train_now: bool, defer: bool) -> None:
        if train_now and self._can_train():
            if defer:
                self.pending_round = True
            else:
                self._train_round()

    def _train_round(self) -> None:
        for _ in range(self.config.gradient_steps):
            self._update()

    def run_pending_round(self) -> None:
        """Run the training round a deferred `step_values` or `step_rows` left due, if
        any. Its reply is already sent, so an error is kept and raised by this agent's
        next `step`, `optimize` or `save` (`_raise_round_error`)."""
        if self.pending_round:
            self.pending_round = False
            try:
                self._train_round()
            except Exception as exc:  # noqa: BLE001 - reported by the next call
                self.round_error = exc

    def _raise_round_error(self) -> None:
        if self.round_error is not None:
            exc, self.round_error = self.round_error, None
            raise RuntimeError(f"the training round after the last step failed ({type(exc).__name__}: {exc}); "
                               f"{self.updates} updates are done, and the agent goes on from there") from exc

    def begin_episodes(self) -> None:
        """Forget every slot's last observation and pending n-step steps: the next `step`
        of each slot only acts. For envs reset outside an episode end, or a caller that
        resumes from a checkpoint while its envs have moved on."""
        self.prev_obs.clear()
        self.prev_action.clear()
        self.replay.pending.clear()

    # ------------------------------------------------------------------ misc

    def info(self) -> dict[str, Any]:
        """Counters and settings as plain Python values."""
        metrics = self.last_metrics() or {}
        return {
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episodes": self.episodes,
            "epsilon": float(self.epsilon),
            "replay_size": len(self.replay),
            "obs_dim": self.obs_dim,
            "n_actions": self.n_actions,
            "loss": metrics.get("loss"),
            "q_mean": metrics.get("q_mean"),
            "config": self.config.to_dict(),
        }

    def save(self, path: str) -> None:
        """Write a checkpoint atomically (see `bridge.checkpoint`)."""
        from bridge import checkpoint

        self._raise_round_error()
        checkpoint.save(self, path)

    @classmethod
    def load(cls, path: str) -> "Agent":
        """An agent restored from a checkpoint written by `save`."""
        from bridge import checkpoint

        return checkpoint.load(path)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
