"""bridge.api in process: argument forms in, exact built-ins out."""
from __future__ import annotations

import doctest

import numpy as np
import pytest

import bridge.api as api
from bridge.protocol import Atom, encode
from conftest import assert_plain

OBS = [0.02, -0.01, 0.03, 0.01]
SMALL = {"seed": 3, "batch_size": 8, "learning_starts": 8, "n_step": 1, "hidden_sizes": [16]}


@pytest.fixture(scope="module")
def agent():
    handle = api.new_agent(SMALL)
    yield handle
    api.close(handle)


def test_docstring_examples():
    assert doctest.testmod(api).failed == 0


def test_handles_are_tagged_tuples_of_exact_types(agent):
    assert type(agent) is tuple and type(agent[0]) is str and type(agent[1]) is int
    assert agent[0] == "agent"
    env = api.env_make("CartPole-v1")
    assert env[0] == "env" and env[1] != agent[1]
    api.env_close(env)


def test_select_action_single_batch_and_tensor(agent):
    action = api.select_action(agent, OBS)
    assert type(action) is int and action in (0, 1)
    actions = api.select_action(agent, [OBS] * 5, {"greedy": True})
    assert type(actions) is list and len(actions) == 5
    assert_plain(actions)
    tensor = (Atom("tensor"), Atom("f32"), (2, 4), np.asarray([OBS] * 2, "<f4").tobytes())
    assert api.select_action(agent, tensor, [(Atom("greedy"), True)]) == actions[:2]
    assert api.select_action(agent, np.asarray(OBS), None) in (0, 1)


def test_observe_optimize_step_results(agent):
    for i in range(10):
        assert api.observe(agent, {"obs": OBS, "action": i % 2, "reward": 1.0,
                                   "next_obs": OBS, "terminated": i == 9,
                                   "truncated": False}) is None
    result = api.optimize(agent)
    assert_plain(result)
    assert set(result) == {"loss", "q_mean", "updates"} and type(result["updates"]) is int
    first = api.step(agent, [OBS, OBS], 0.0, False, False)
    assert_plain(first)
    actions = api.step(agent, [OBS, OBS], [1.0, 0.5], [True, False], [False, False],
                       [[0.1, 0.1, 0.1, 0.1], [0.0] * 4])
    assert type(actions) is list and all(type(a) is int for a in actions)
    info = api.info(agent)
    assert_plain(info)
    assert info["env_steps"] == 12 and info["config"]["hidden_sizes"] == [16]
    encode(info)  # and it travels over the wire


def test_optimize_skipped_before_learning_starts():
    handle = api.new_agent([("seed", 1), ("learning_starts", 100), ("hidden_sizes", [8])])
    assert api.optimize(handle) == "skipped"
    api.close(handle)


def test_save_load_close(agent, tmp_path):
    path = tmp_path / "a.ckpt"
    assert api.save(agent, str(path).encode()) is None
    loaded = api.load(str(path))
    assert api.select_action(loaded, [OBS, [0.5] * 4], {"greedy": True}) == \
        api.select_action(agent, [OBS, [0.5] * 4], {"greedy": True})
    assert api.close(loaded) is None
    with pytest.raises(ValueError, match="unknown agent handle"):
        api.info(loaded)
    with pytest.raises(ValueError):
        api.load(str(tmp_path / "missing.ckpt"))


def test_env_functions_return_plain_values():
    env = api.env_make(b"CartPole-v1", {"max_episode_steps": 2})
    spec = api.env_spec(env)
    assert_plain(spec)
    assert spec["max_episode_steps"] == 2
    obs = api.env_reset(env, 0)
    assert obs == api.env_reset(env, 0)  # seeded
    assert_plain(obs)
    out = api.env_step(env, 0)
    assert_plain(out)
    assert type(out) is tuple and out[3] is False
    assert api.env_step(env, 1)[3] is True
    with pytest.raises(ValueError, match="must be reset"):
        api.env_step(env, 1)
    api.env_close(env)
    with pytest.raises(ValueError, match="unknown env handle"):
        api.env_spec(env)


@pytest.mark.parametrize("env_id", ["gymnasium.envs.classic_control:CartPoleEnv", "os:system",
                                    "NoSuchEnv-v0"])
def test_only_registered_env_ids(env_id):
    with pytest.raises(ValueError, match="not a registered gymnasium env"):
        api.env_make(env_id)
    with pytest.raises(ValueError, match="not a registered gymnasium env"):
        api.new_agent({"env_id": env_id})


def test_bad_arguments_name_the_problem(agent):
    with pytest.raises(ValueError, match=r"transition lacks key\(s\) reward"):
        api.observe(agent, {"obs": OBS, "action": 0, "next_obs": OBS,
                            "terminated": False, "truncated": False})
    with pytest.raises(ValueError, match="unknown key 'done' in transition"):
        api.observe(agent, {"done": True})
    with pytest.raises(ValueError, match="every element of terminated must be true or false"):
        api.step(agent, [OBS, OBS], [0.0, 0.0], [0, 1], [False, False])
    with pytest.raises(ValueError, match="reward must be a number"):
        api.step(agent, OBS, b"1", False, False)
    with pytest.raises(ValueError, match="max_episode_steps must be an integer"):
        api.env_make("CartPole-v1", {"max_episode_steps": 2.5})


def test_ping_returns_its_argument():
    term = {"a": [1, (2.0, b"x")], Atom("b"): None}
    assert api.ping(term) is term
