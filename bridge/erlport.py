"""`bridge.api` for users of the standard ErlPort library, with idiomatic Elixir results.

    {:ok, py} = :python.start(python: ~c"python3")
    agent = :python.call(py, :"bridge.erlport", :new_agent, [%{seed: 0}])
    #=> {:agent, 1}
    :python.call(py, :"bridge.erlport", :info, [agent])
    #=> %{env_steps: 0, epsilon: 1.0, config: %{loss: "huber", ...}, loss: nil, ...}

The functions and arguments are those of `bridge.api`; only the results differ: map keys
and status words are atoms (`:ok`, `:skipped`), text is a binary, None is `nil` and
handles are `{:agent, n}` / `{:env, n}`. ErlPort itself would send a Python str as a
charlist and None as `:undefined`.

Atoms are built on ErlPort's own `erlport.erlterms.Atom`; outside an ErlPort-started
interpreter (tests, docs) a bytes subclass of the same shape stands in for it.
"""
from __future__ import annotations

from bridge import api

try:
    from erlport.erlterms import Atom
except ImportError:  # not running under ErlPort
    class Atom(bytes):
        """Stand-in for `erlport.erlterms.Atom` (a bytes subclass)."""

__all__ = list(api.__all__)

OK = Atom(b"ok")
NIL = Atom(b"nil")


def to_elixir(value):
    """An api result with str dict keys -> atoms, str -> binary, None -> nil, handle
    tuples -> `{:tag, n}`."""
    if value is None:
        return NIL
    kind = type(value)
    if kind is str:
        return value.encode("utf-8")
    if kind is dict:
        return {Atom(k.encode("utf-8")): to_elixir(v) for k, v in value.items()}
    if kind is list:
        return [to_elixir(v) for v in value]
    if kind is tuple:
        return tuple(to_elixir(v) for v in value)
    return value


def _handle(handle):
    tag, number = handle
    return (Atom(tag.encode("utf-8")), number)


def _ok(_none) -> Atom:
    return OK


def new_agent(config=None):
    return _handle(api.new_agent(config))


def select_action(handle, obs, opts=None):
    return api.select_action(handle, obs, opts)


def observe(handle, transition):
    return _ok(api.observe(handle, transition))


def optimize(handle):
    result = api.optimize(handle)
    return Atom(b"skipped") if result == "skipped" else to_elixir(result)


def step(handle, obs, reward, terminated, truncated, final_obs=None):
    return api.step(handle, obs, reward, terminated, truncated, final_obs)


def save(handle, path):
    return _ok(api.save(handle, path))


def load(path):
    return _handle(api.load(path))


def info(handle):
    return to_elixir(api.info(handle))


def begin_episodes(handle):
    return _ok(api.begin_episodes(handle))


def close(handle):
    return _ok(api.close(handle))


def env_make(env_id, opts=None):
    return _handle(api.env_make(env_id, opts))


def env_spec(env):
    return to_elixir(api.env_spec(env))


def env_reset(env, seed=None):
    return api.env_reset(env, seed)


def env_step(env, action):
    return api.env_step(env, action)


def env_close(env):
    return _ok(api.env_close(env))


def ping(term):
    return term


for _name in __all__:  # the same documentation as the api function each one wraps
    globals()[_name].__doc__ = getattr(api, _name).__doc__
