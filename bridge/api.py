"""The functions the BEAM may call: `{:C, id, :"bridge.api", fun, args}` over the port, or
`:python.call(pid, :"bridge.api", fun, args)` through the standard ErlPort library.

Only the names in `__all__` can be called. Every function turns its arguments into plain
Python and numpy values through `bridge.protocol` (so it accepts our wire types and
ErlPort's alike) and returns exact built-ins only: int, float, bool, None, str, bytes,
list, tuple and dict with str keys, never numpy scalars or non-finite floats.

Handles: `new_agent`/`load` return `("agent", n)` and `env_make` returns `("env", n)`, a
2-tuple of a tag and a positive integer unique within this process. Callers hand them
back unchanged (the tag may come back as a string, binary, atom or charlist); a handle
that was never issued or is closed is refused by name.

Observations are one observation (a list of `obs_dim` numbers) or a batch (a list of such
lists, first axis = env slot), or a `{:tensor, dtype, shape, data}` term; `:nan`,
`:infinity` and `:neg_infinity` stand for non-finite floats (which are then refused).

Example (in process; over the wire the calls are the same):

>>> import bridge.api as api
>>> api.ping([1, "two", (3.0,)])
[1, 'two', (3.0,)]
"""
from __future__ import annotations

import itertools
from typing import Any, Callable

import numpy as np

from bridge.protocol import (as_array, as_bool, as_float, as_int, as_options, as_text,
                             describe, is_nil, to_builtin)
from bridge.protocol.fastpath import CallFailed, parse_call, result_reply, results_reply

__all__ = ["new_agent", "select_action", "observe", "optimize", "step", "begin_episodes",
           "save", "load", "info", "close", "env_make", "env_spec", "env_reset", "env_step", "env_close",
           "ping"]

_agents: dict[int, Any] = {}  # handle number -> bridge.agent.Agent
_envs: dict[int, Any] = {}  # handle number -> bridge.envs.GymEnv
_handle_numbers = itertools.count(1)

_TRANSITION_KEYS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


# --------------------------------------------------------------------------- handles

def _issue(table: dict, kind: str, obj) -> tuple[str, int]:
    number = next(_handle_numbers)
    table[number] = obj
    return (kind, number)


def _number(table: dict, kind: str, handle) -> int:
    if type(handle) is tuple and len(handle) == 2 and type(handle[1]) is int \
            and handle[1] in table:
        tag = handle[0]
        if tag == kind or (not isinstance(tag, str) and _text_or_none(tag) == kind):
            return handle[1]
    open_handles = ", ".join(f"({kind!r}, {n})" for n in sorted(table)) or "none"
    raise ValueError(f"unknown {kind} handle {describe(handle)}: it was never issued or is "
                     f"closed (open {kind} handles: {open_handles})")


def _text_or_none(value) -> str | None:
    try:
        return as_text(value, "handle tag")
    except ValueError:
        return None


def _agent(handle):
    return _agents[_number(_agents, "agent", handle)]


def _env(handle):
    return _envs[_number(_envs, "env", handle)]


# ----------------------------------------------------------------- argument helpers

def _obs(value, what: str = "obs") -> np.ndarray:
    return as_array(value, np.float32, what)


def _per_slot(value, convert, dtype, what: str):
    """One value (a scalar) or a list of them, one per env slot."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return as_array(value, dtype, what)
    return convert(value, what)


def _flags(value, what: str):
    if isinstance(value, (list, tuple)):
        return np.array([as_bool(v, f"every element of {what}") for v in value], dtype=bool)
    return as_bool(value, what)


def _actions_result(actions):
    return actions if type(actions) is int else to_builtin(actions, "actions")


def _greedy(opts) -> bool:
    if opts is None:
        return False
    if type(opts) is dict and len(opts) == 1:
        value = opts.get("greedy", opts)  # our Atom keys hash and compare as str
        if value is True or value is False:
            return value
    options = as_options(opts, ("greedy",), "select_action options")
    return as_bool(options.get("greedy", False), "option greedy")


# ------------------------------------------------------------------------- agents

def new_agent(config=None) -> tuple[str, int]:
    """A new agent from a config map or keyword list (nil or omitted = defaults).

    Keys are `bridge.config.DQNConfig` fields; the tuned preset of `env_id` (if any) fills
    the fields not given. An unknown key or a wrong type is refused with a message naming
    it and listing the allowed keys.
    Returns: the agent handle `("agent", n)`.
    """
    from bridge.agent import Agent
    from bridge.config import DQNConfig
    from bridge.envs import check_registered

    config = DQNConfig.for_env(None if is_nil(config) else config)
    if config.obs_dim is None or config.n_actions is None:
        check_registered(config.env_id)  # Agent makes the env to read its dimensions
    return _issue(_agents, "agent", Agent(config))


def select_action(handle, obs, opts=None):
    """Epsilon-greedy action(s) for one observation or a batch.

    Args:
      opts: nil or a map/keyword list with `greedy: true` to ignore epsilon (evaluation).
    Returns: an int for one observation, a list of ints for a batch.
    """
    agent = _agent(handle)
    return _actions_result(agent.act(_obs(obs), greedy=_greedy(opts)))


def fast_reply(payload: bytes) -> bytes | tuple[bytes, Callable[[], None]] | None:
    """The encoded reply to a `select_action` frame or a `step` frame (of one env slot
    or several), computed without the general decode/normalise/encode path; None for
    every other frame and for any call this cannot answer as is (the server's general
    path then answers it, errors included). A `step` that fails once it has started
    raises CallFailed: its error is the reply, and the call is not run again. A `step`
    whose training round is due returns (reply, round): the server sends the reply, then
    runs the round, so the round computes while the BEAM steps its env(s). Not in
    `__all__`: the server calls it before decoding a frame."""
    call = parse_call(payload)
    if call is None:
        return None
    agent = _agents.get(call[2])
    if agent is None:
        return None
    kind, call_id = call[0], call[1]
    if kind == "select_action":
        action = agent.act_values(*call[3:])
        return None if action is None else result_reply(call_id, action)
    step = agent.step_rows if kind == "step_rows" else agent.step_values
    try:
        action = step(*call[3:], defer=True)
    except Exception as exc:
        raise CallFailed(call_id) from exc
    if action is None:  # declined before changing anything: no round is pending
        return None
    reply = results_reply(call_id, action) if kind == "step_rows" else result_reply(call_id, action)
    return (reply, agent.run_pending_round) if agent.pending_round else reply


def observe(handle, transition) -> None:
    """Store one transition, or a batch (one row per env slot).

    Args:
      transition: a map with keys obs, action, reward, next_obs, terminated, truncated.
    """
    agent = _agent(handle)
    t = as_options(transition, _TRANSITION_KEYS, "transition")
    missing = [k for k in _TRANSITION_KEYS if k not in t]
    if missing:
        raise ValueError(f"transition lacks key(s) {', '.join(missing)}; it needs "
                         f"{', '.join(_TRANSITION_KEYS)}")
    agent.observe(_obs(t["obs"]), _per_slot(t["action"], as_int, np.int64, "action"),
                  _per_slot(t["reward"], as_float, np.float64, "reward"),
                  _obs(t["next_obs"], "next_obs"), _flags(t["terminated"], "terminated"),
                  _flags(t["truncated"], "truncated"))
    return None


def optimize(handle):
    """Run the configured gradient steps now.

    Returns: {"loss", "q_mean", "updates"}, or "skipped" while replay holds too little.
    A diverged loss is an error (FloatingPointError naming the update), never a NaN.
    """
    metrics = _agent(handle).optimize()
    return "skipped" if metrics is None else to_builtin(metrics, "optimize result")


def step(handle, obs, reward, terminated, truncated, final_obs=None):
    """Fused store + train-when-due + act for every env slot (see `Agent.step`).

    Args:
      obs: what to act on now; for a slot whose episode just ended, the reset observation.
      reward, terminated, truncated: outcome of the previous action (scalars, or one per slot).
      final_obs: nil, or for ended slots the last observation of the ended episode.
    Returns: the next action (int) or actions (list of ints).
    """
    agent = _agent(handle)
    final = None if is_nil(final_obs) else _obs(final_obs, "final_obs")
    actions = agent.step(_obs(obs), _per_slot(reward, as_float, np.float64, "reward"),
                         _flags(terminated, "terminated"), _flags(truncated, "truncated"),
                         final)
    return _actions_result(actions)


def save(handle, path) -> None:
    """Write the agent's checkpoint to `path` (atomically)."""
    _agent(handle).save(as_text(path, "path"))
    return None


def load(path) -> tuple[str, int]:
    """A new agent from a checkpoint file. Returns its handle."""
    from bridge.agent import Agent

    return _issue(_agents, "agent", Agent.load(as_text(path, "path")))


def info(handle) -> dict:
    """Counters and settings: env_steps, updates, episodes, epsilon, replay_size, obs_dim,
    n_actions, loss, q_mean (nil before the first update), config (a map)."""
    return to_builtin(_agent(handle).info(), "info")


def begin_episodes(handle) -> None:
    """Forget each env slot's last observation and pending n-step steps: the next `step`
    only acts. Call it after resetting envs mid-episode, or after `load` when the envs
    have moved on since the checkpoint was written."""
    _agent(handle).begin_episodes()
    return None


def close(handle) -> None:
    """Forget the agent; its handle is refused afterwards."""
    del _agents[_number(_agents, "agent", handle)]
    return None


# --------------------------------------------------------------------------- envs

def env_make(env_id, opts=None) -> tuple[str, int]:
    """A gymnasium env by registered id.

    Args:
      opts: nil or a map/keyword list; `max_episode_steps` overrides the time limit.
    Returns: the env handle `("env", n)`.
    """
    from bridge.envs import GymEnv

    options = as_options(opts, ("max_episode_steps",), "env_make options")
    limit = options.get("max_episode_steps")
    limit = None if is_nil(limit) else as_int(limit, "max_episode_steps")
    return _issue(_envs, "env", GymEnv(as_text(env_id, "env id"), limit))


def env_spec(env) -> dict:
    """{"id", "obs_dim", "obs_shape", "n_actions", "max_episode_steps", "reward_threshold"}."""
    return to_builtin(_env(env).spec(), "env_spec")


def env_reset(env, seed=None) -> list:
    """Start an episode (seeded when `seed` is an integer); returns the observation."""
    return _env(env).reset(None if is_nil(seed) else as_int(seed, "seed"))


def env_step(env, action) -> tuple:
    """Returns (observation, reward, terminated, truncated)."""
    return _env(env).step(as_int(action, "action"))


def env_close(env) -> None:
    """Close the env; its handle is refused afterwards."""
    number = _number(_envs, "env", env)
    _envs.pop(number).close()
    return None


def ping(term):
    """Returns `term` unchanged (a liveness check, and the benchmarks' echo)."""
    return term
