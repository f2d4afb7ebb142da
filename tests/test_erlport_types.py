"""bridge.api and bridge.erlport called the way the standard ErlPort library calls them.

ErlPort's Python side (erlport.erlterms) hands over atoms as a bytes subclass (`nil`
included; `undefined` becomes None), Elixir strings as bytes, charlists as lists of ints,
and lists/maps as read-only list/dict subclasses. Those types are reproduced here.
"""
from __future__ import annotations

import importlib
import sys
import types

import pytest

import bridge.api as api
from conftest import assert_plain


class ErlAtom(bytes):
    """erlport.erlterms.Atom"""


class ErlList(list):
    """erlport.erlterms.List: read-only."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("ErlPort lists are read-only")

    __setitem__ = __delitem__ = append = extend = insert = pop = remove = sort = _refuse


class ErlMap(dict):
    """erlport.erlterms.Map: read-only."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("ErlPort maps are read-only")

    __setitem__ = __delitem__ = update = pop = popitem = setdefault = clear = _refuse


NIL = ErlAtom(b"nil")


def charlist(text: str) -> ErlList:
    return ErlList(map(ord, text))


def returned(handle):
    """A handle after a trip through ErlPort: its str tag comes back as a charlist."""
    return (charlist(handle[0]), handle[1])


def obs(values=(0.02, -0.01, 0.03, 0.01)) -> ErlList:
    return ErlList(values)


@pytest.fixture(scope="module")
def agent():
    config = ErlMap({ErlAtom(b"seed"): 0, ErlAtom(b"env_id"): b"CartPole-v1",
                     ErlAtom(b"hidden_sizes"): ErlList([16]), ErlAtom(b"obs_dim"): NIL,
                     ErlAtom(b"loss"): charlist("mse"), ErlAtom(b"batch_size"): 8,
                     ErlAtom(b"learning_starts"): 8, ErlAtom(b"n_step"): 1})
    handle = api.new_agent(config)
    assert_plain(handle)
    yield returned(handle)
    api.close(returned(handle))


def test_agent_functions_accept_erlport_types_and_return_plain_values(agent, tmp_path):
    assert api.info(agent)["config"]["loss"] == "mse"
    action = api.select_action(agent, obs(), ErlMap({ErlAtom(b"greedy"): True}))
    assert type(action) is int
    batch = api.select_action(agent, ErlList([obs(), obs()]),
                              ErlList([(ErlAtom(b"greedy"), ErlAtom(b"false"))]))
    assert_plain(batch)
    for i in range(10):
        transition = ErlMap({ErlAtom(b"obs"): obs(), ErlAtom(b"action"): i % 2,
                             ErlAtom(b"reward"): 1.0, ErlAtom(b"next_obs"): obs(),
                             ErlAtom(b"terminated"): False, ErlAtom(b"truncated"): False})
        assert api.observe(agent, transition) is None
    assert_plain(api.optimize(agent))
    assert type(api.step(agent, obs(), 0.0, False, False, NIL)) is int
    assert type(api.step(agent, obs(), 1.0, True, False, obs((0.5,) * 4))) is int
    assert_plain(api.info(agent))
    path = tmp_path / "erlport.ckpt"
    assert api.save(agent, str(path).encode()) is None  # an Elixir string
    loaded = api.load(charlist(str(path)))  # a charlist
    assert_plain(loaded)
    assert api.close(returned(loaded)) is None


def test_env_functions_accept_erlport_types(agent):
    del agent
    env = returned(api.env_make(b"CartPole-v1", ErlMap({ErlAtom(b"max_episode_steps"): NIL})))
    assert api.env_spec(env)["max_episode_steps"] == 500
    first = api.env_reset(env, NIL)
    assert_plain(first)
    assert_plain(api.env_step(env, 1))
    assert api.env_reset(env, 5) == api.env_reset(env, 5)
    assert api.env_close(env) is None
    env = returned(api.env_make(charlist("CartPole-v1"), ErlList([])))
    assert api.env_close(env) is None


def test_errors_name_erlport_values_readably(agent):
    with pytest.raises(ValueError, match="unknown key 'greed'"):
        api.select_action(agent, obs(), ErlMap({ErlAtom(b"greed"): True}))
    with pytest.raises(ValueError, match="unknown config key 'lrr'"):
        api.new_agent(ErlList([(ErlAtom(b"lrr"), 1.0)]))
    with pytest.raises(ValueError, match="option greedy must be true or false, got :maybe"):
        api.select_action(agent, obs(), ErlMap({ErlAtom(b"greedy"): ErlAtom(b"maybe")}))
    with pytest.raises(ValueError, match="unknown env handle"):
        api.env_step((ErlAtom(b"env"), 10_000), 0)


def test_bridge_erlport_gives_idiomatic_elixir_results(agent, tmp_path):
    import bridge.erlport as ep

    handle = ep.new_agent(ErlMap({ErlAtom(b"seed"): 1, ErlAtom(b"hidden_sizes"): ErlList([8])}))
    assert handle[0] == b"agent" and isinstance(handle[0], ep.Atom) and type(handle[1]) is int
    info = ep.info(handle)
    assert all(isinstance(k, ep.Atom) for k in info)
    assert info[b"loss"] == ep.NIL and isinstance(info[b"loss"], ep.Atom)
    assert info[b"config"][b"loss"] == b"huber" and type(info[b"config"][b"loss"]) is bytes
    assert ep.optimize(handle) == b"skipped" and isinstance(ep.optimize(handle), ep.Atom)
    transition = ErlMap({ErlAtom(k): v for k, v in [
        (b"obs", obs()), (b"action", 0), (b"reward", 1.0), (b"next_obs", obs()),
        (b"terminated", False), (b"truncated", True)]})
    assert ep.observe(handle, transition) == b"ok"
    assert ep.save(handle, str(tmp_path / "h.ckpt").encode()) == b"ok"
    assert type(ep.select_action(handle, obs())) is int
    env = ep.env_make(b"CartPole-v1")
    assert env[0] == b"env" and isinstance(env[0], ep.Atom)
    spec = ep.env_spec(env)
    assert spec[b"id"] == b"CartPole-v1" and isinstance(next(iter(spec)), ep.Atom)
    assert type(ep.env_reset(env, 0)) is list
    assert type(ep.env_step(env, 0)) is tuple
    assert ep.env_close(env) == b"ok" and ep.close(handle) == b"ok"
    assert ep.ping(NIL) is NIL


def test_bridge_erlport_uses_erlports_own_atom_type(monkeypatch):
    erlterms = types.ModuleType("erlport.erlterms")

    class Atom(bytes):
        pass

    erlterms.Atom = Atom
    package = types.ModuleType("erlport")
    package.erlterms = erlterms
    monkeypatch.setitem(sys.modules, "erlport", package)
    monkeypatch.setitem(sys.modules, "erlport.erlterms", erlterms)
    import bridge.erlport

    try:
        reloaded = importlib.reload(bridge.erlport)
        assert reloaded.Atom is Atom
        assert type(reloaded.to_elixir({"k": None})) is dict
        key, value = next(iter(reloaded.to_elixir({"k": None}).items()))
        assert type(key) is Atom and type(value) is Atom and value == b"nil"
    finally:
        monkeypatch.undo()
        importlib.reload(bridge.erlport)
