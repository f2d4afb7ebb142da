"""The learning core: a TrainState pytree and the jitted `train_step`.

At CartPole scale the cost of a step is per-call overhead, not arithmetic, so a train step
takes one packed float32 array (one host-to-device transfer) and does everything else —
TD target, loss, gradient, optimizer, target-network update — inside one jitted call.

Packed batch layout, one row per transition (see `bridge.replay`):
  [obs (obs_dim) | action | n-step return | bootstrap discount | next_obs (obs_dim) | IS weight]
where the bootstrap discount is gamma**k for a k-step transition and 0 when it terminated.
"""

from __future__ import annotations

import functools
import types
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bridge import network
from bridge.config import DQNConfig


class TrainState(NamedTuple):
    """Everything the train step changes, as one pytree of six arrays: the networks are
    flat (`network.flatten`), so the optimizer's moments are one array each too, and a
    train step call hands over six buffers instead of 26 for two hidden layers (a dispatch
    costs per buffer)."""

    params: jax.Array  # online network, flat
    target_params: jax.Array  # target network, flat
    opt_state: optax.OptState  # over the flat params
    updates: jax.Array  # int32 scalar: gradient steps taken so far


def packed_width(obs_dim: int) -> int:
    """Columns of a packed transition row."""
    return 2 * obs_dim + 4


def make_optimizer(config: Any) -> optax.GradientTransformation:
    """Gradient clipping (when max_grad_norm > 0) followed by the configured optimizer."""
    opt = {
        "adam": lambda: optax.adam(config.lr),
        "rmsprop": lambda: optax.rmsprop(config.lr, decay=0.95, eps=1e-5),
        "adamw": lambda: optax.adamw(config.lr, weight_decay=1e-4),
    }[config.optimizer]()
    if config.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), opt)
    return opt


def init_state(config: DQNConfig, obs_dim: int, n_actions: int) -> TrainState:
    """A fresh TrainState; the target network starts as a copy of the online one."""
    params = network.flatten(network.init(jax.random.PRNGKey(config.seed), obs_dim, config.hidden_sizes,
                                          n_actions, config.dueling))
    target = jnp.copy(params)  # a distinct buffer: the train step donates both
    return TrainState(params, target, make_optimizer(config).init(params), jnp.zeros((), jnp.int32))


def td_target(q_next_online: jax.Array, q_next_target: jax.Array, returns: jax.Array,
              discounts: jax.Array, double_dqn: bool) -> jax.Array:
    """n-step TD target: R + discount * Q_target(s', a*).

    Args:
      q_next_online: (batch, n_actions) online Q at s' (chooses a* under double DQN).
      q_next_target: (batch, n_actions) target Q at s'.
      returns: (batch,) discounted n-step rewards.
      discounts: (batch,) gamma**k, or 0 where the episode terminated.
      double_dqn: choose a* with the online net (True) or the target net (False).
    Returns:
      (batch,) targets, with no gradient flowing through them.
    """
    if double_dqn:
        best = jnp.argmax(q_next_online, axis=1)
        bootstrap = jnp.take_along_axis(q_next_target, best[:, None], axis=1)[:, 0]
    else:
        bootstrap = q_next_target.max(axis=1)
    return jax.lax.stop_gradient(returns + discounts * bootstrap)


# The config fields a train step depends on: agents that agree on them share one compiled step.
_TRAIN_STEP_FIELDS = ("optimizer", "lr", "max_grad_norm", "loss", "dueling", "double_dqn",
                      "target_update", "target_update_interval", "tau")


def make_train_step(config: DQNConfig, state: TrainState, where: network.Layout) -> Callable[[TrainState, jax.Array], tuple]:
    """The compiled `train_step(state, packed) -> (state, flat_params, loss, q_mean, abs_td)`.

    `where` is the `network.layout` of the flat params. flat_params is a copy of the new
    online params (its own buffer, never donated), for acting on the host.
    Compiled ahead of time for `state`'s shapes and `config.batch_size`, so training never
    pauses for JIT; built once per distinct setting, so a restarted or second agent with
    the same shapes compiles nothing.
    """
    settings = tuple(getattr(config, f) for f in _TRAIN_STEP_FIELDS)
    leaves, treedef = jax.tree.flatten(state)
    specs = tuple((tuple(x.shape), jnp.dtype(x.dtype)) for x in leaves)
    return _compile_train_step(settings, where, config.batch_size, treedef, specs)


def _obs_dim(where: network.Layout) -> int:
    return where[0][0][2][0]  # the first layer's weights are (obs_dim, width)


@functools.lru_cache(maxsize=32)
def _compile_train_step(settings: tuple, where: network.Layout, batch_size: int, treedef, specs: tuple) -> Callable:
    state = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in specs])
    packed = jax.ShapeDtypeStruct((batch_size, packed_width(_obs_dim(where))), jnp.float32)
    return _build_train_step(settings, where).lower(state, packed).compile()


@functools.lru_cache(maxsize=16)
def _build_train_step(settings: tuple, where: network.Layout) -> Callable[[TrainState, jax.Array], tuple]:
    config = types.SimpleNamespace(**dict(zip(_TRAIN_STEP_FIELDS, settings)))
    optimizer = make_optimizer(config)
    dueling, double_dqn = config.dueling, config.double_dqn
    d = _obs_dim(where)

    def loss_fn(flat, target_flat, packed):
        params, target_params = network.unflatten(flat, where), network.unflatten(target_flat, where)
        obs, actions = packed[:, :d], packed[:, d].astype(jnp.int32)
        returns, discounts = packed[:, d + 1], packed[:, d + 2]
        next_obs, weights = packed[:, d + 3:2 * d + 3], packed[:, 2 * d + 3]
        q = network.apply(params, obs, dueling)
        # s' through the online net only picks the bootstrap action: no gradient, so its
        # backward pass (half the work of one through a 2 * batch forward) is never built.
        q_next_online = network.apply(jax.lax.stop_gradient(params), next_obs, dueling)
        q_next_target = network.apply(target_params, next_obs, dueling)
        q_taken = jnp.take_along_axis(q, actions[:, None], axis=1)[:, 0]  # (batch,)
        td = q_taken - td_target(q_next_online, q_next_target, returns, discounts, double_dqn)
        if config.loss == "huber":
            per_sample = optax.huber_loss(td, delta=1.0)
        else:
            per_sample = 0.5 * td ** 2
        return jnp.mean(weights * per_sample), (jnp.mean(q_taken), jnp.abs(td))

    @partial(jax.jit, donate_argnums=0)
    def train_step(state: TrainState, packed: jax.Array):
        """One gradient step on a packed batch; updates the target net when due."""
        (loss, (q_mean, abs_td)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.target_params, packed)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        n = state.updates + 1
        if config.target_update == "hard":
            target = jnp.where(n % config.target_update_interval == 0, params, state.target_params)
        else:
            target = optax.incremental_update(params, state.target_params, config.tau)
        # XLA gives each output its own buffer, so the acting copy outlives the donation of
        # `params` by the next step.
        return TrainState(params, target, opt_state, n), params, loss, q_mean, abs_td

    return train_step


def greedy_actions(host_params: list, obs: np.ndarray, dueling: bool) -> np.ndarray:
    """argmax_a Q(obs, a) on the host, for a (batch, obs_dim) batch -> (batch,) int32."""
    return np.argmax(network.apply(host_params, obs, dueling, xp=np), axis=1).astype(np.int32)
