"""A pure-JAX MLP Q-network with an optional dueling head: `init`, `apply`, and the flat form.

Params are a plain pytree: a list of (weight, bias) pairs, the last pair being the head.
With `dueling`, the head has n_actions + 1 outputs: the advantages, then the state value.
The learner keeps them flat (`flatten`: one 1-D array) and views them as pairs with
`unflatten`, so that its state is a handful of arrays instead of dozens.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Params = list[tuple[jax.Array, jax.Array]]


def init(key: jax.Array, obs_dim: int, hidden_sizes: Sequence[int], n_actions: int, dueling: bool) -> Params:
    """LeCun-uniform weights and zero biases for obs_dim -> hidden... -> head.

    Args:
      key: a JAX PRNG key.
      obs_dim, hidden_sizes, n_actions, dueling: the shape of the network.
    Returns:
      the params pytree.
    """
    sizes = [obs_dim, *hidden_sizes, n_actions + (1 if dueling else 0)]
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:]):
        limit = jnp.sqrt(3.0 / fan_in)
        w = jax.random.uniform(k, (fan_in, fan_out), jnp.float32, -limit, limit)
        params.append((w, jnp.zeros((fan_out,), jnp.float32)))
    return params


def apply(params: Params, obs: Any, dueling: bool, xp: Any = jnp) -> Any:
    """Q-values for a batch of observations.

    The same code runs under jit (xp = jax.numpy) and on the host (xp = numpy), where a
    forward pass of a small net costs a few microseconds instead of a device dispatch.

    Args:
      params: from `init` (device arrays, or numpy arrays when xp is numpy).
      obs: (batch, obs_dim) float32.
      dueling: whether the head is a dueling head (must match `init`).
      xp: the array module, jax.numpy or numpy.
    Returns:
      (batch, n_actions) Q-values.
    """
    x = obs
    for w, b in params[:-1]:
        x = xp.maximum(x @ w + b, 0.0)
    w, b = params[-1]
    out = x @ w + b  # (batch, n_actions [+ 1])
    if not dueling:
        return out
    advantage, value = out[:, :-1], out[:, -1:]
    return value + advantage - advantage.mean(axis=1, keepdims=True)


def flatten(params: Params) -> jax.Array:
    """All params in one 1-D array, layer by layer, weights before biases (see `layout`)."""
    return jnp.concatenate([x.ravel() for pair in params for x in pair])


Layout = tuple[tuple[tuple[int, int, tuple[int, ...]], ...], ...]


def layout(obs_dim: int, hidden_sizes: Sequence[int], n_actions: int, dueling: bool) -> Layout:
    """Where each array of `init`'s params lies in `flatten(params)`: per layer, (start, end,
    shape) of its weights and of its bias. A tuple, so it can key a compile cache."""
    sizes = [obs_dim, *hidden_sizes, n_actions + (1 if dueling else 0)]
    out, offset = [], 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        pair = []
        for shape in ((fan_in, fan_out), (fan_out,)):
            size = int(np.prod(shape))
            pair.append((offset, offset + size, shape))
            offset += size
        out.append(tuple(pair))
    return tuple(out)


def unflatten(flat: Any, where: Layout) -> list[tuple[Any, Any]]:
    """The inverse of `flatten`: views into `flat` shaped as `init`'s params, placed by
    `layout`. Works on a numpy array (on the host) and on a jax array (under jit, where the
    slices are free)."""
    return [tuple(flat[start:end].reshape(shape) for start, end, shape in pair) for pair in where]
