"""Training after the reply: `bridge serve` sends `step`'s action first and trains after.

Deferring must change nothing but timing: the same actions, the same updates, the same
params as an agent that trains inside `step`, both in process and through the real server.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import bridge.api as api
from bridge.agent import Agent
from bridge.config import DQNConfig
from bridge.protocol import Atom
from conftest import PortClient, RemoteError

CONFIG = {"seed": 4, "learning_starts": 64, "batch_size": 32, "hidden_sizes": [32],
          "eps_decay_steps": 400, "train_freq": 2, "gradient_steps": 2}


def scripted(i: int):
    """(obs, reward, terminated, truncated) of step i: a fixed stream, whatever the actions."""
    obs = [math.sin(0.1 * i), math.cos(0.07 * i), 0.1 * math.sin(0.3 * i), 0.05 * (i % 11)]
    return obs, 1.0, i % 37 == 36, i % 53 == 52


def run_in_process(steps: int):
    agent = Agent(DQNConfig.from_mapping(CONFIG))
    actions, reward, terminated, truncated = [], 0.0, False, False
    for i in range(steps):
        obs, *_ = scripted(i)
        actions.append(agent.step(obs, reward, terminated, truncated))
        _, reward, terminated, truncated = scripted(i)
    return actions, agent


def step_until_a_round_is_due(handle, agent) -> None:
    for i in range(10 * CONFIG["learning_starts"]):
        obs, reward, terminated, truncated = scripted(i)
        api.step(handle, obs, reward, terminated, truncated)
        if agent.pending_updates:
            assert agent.pending_updates == CONFIG["gradient_steps"] and agent.updates == 0
            return
    raise AssertionError("no training round came due")


@pytest.fixture()
def deferring():
    api.defer_training(True)
    yield
    api.defer_training(False)


def test_deferred_training_in_process_matches_training_inside_step(deferring):
    steps = 600
    expected, reference = run_in_process(steps)
    handle = api.new_agent(CONFIG)
    agent = api._agents[handle[1]]
    actions, reward, terminated, truncated = [], 0.0, False, False
    try:
        for i in range(steps):
            obs, *_ = scripted(i)
            actions.append(api.step(handle, obs, reward, terminated, truncated))
            if i > CONFIG["learning_starts"] and i % CONFIG["train_freq"] == 0:
                assert agent.pending_updates == CONFIG["gradient_steps"]  # left for later
            api.run_deferred()
            assert agent.pending_updates == 0
            _, reward, terminated, truncated = scripted(i)
        assert actions == expected
        assert agent.updates == reference.updates > 0
        np.testing.assert_array_equal(np.asarray(agent.flat_params), np.asarray(reference.flat_params))
    finally:
        api.close(handle)


@pytest.fixture()
def round_due(deferring):
    """(handle, agent) of an agent whose last step left a training round due."""
    handle = api.new_agent(CONFIG)
    agent = api._agents[handle[1]]
    step_until_a_round_is_due(handle, agent)
    yield handle, agent
    api.close(handle)


def test_updates_left_due_are_run_by_the_next_call(round_due):
    handle, agent = round_due
    api._due.clear()  # as if the server never got to run them
    assert api.info(handle)["updates"] == CONFIG["gradient_steps"]
    assert agent.pending_updates == 0


def test_a_failed_deferred_round_is_reported_by_the_next_call_and_then_cleared(round_due):
    handle, agent = round_due
    train_step, agent._train_step = agent._train_step, None  # the round will fail
    api.run_deferred()  # must not raise: the server is between calls here
    agent._train_step = train_step
    with pytest.raises(RuntimeError, match="the training round after this agent's previous "
                                           "step failed: TypeError: 'NoneType' object is not callable"):
        api.select_action(handle, scripted(0)[0])
    assert api.select_action(handle, scripted(0)[0]) in (0, 1)  # reported once


def test_the_real_server_defers_and_matches_in_process_training():
    """`bridge serve` trains after replying; the actions and the agent it ends with are
    those of an in-process agent that trained inside `step`."""
    steps = 600
    expected, reference = run_in_process(steps)
    config = {Atom(k): v for k, v in CONFIG.items()}
    with PortClient() as client:
        handle = client.call("new_agent", config)
        actions, reward, terminated, truncated = [], 0.0, False, False
        for i in range(steps):
            obs, *_ = scripted(i)
            actions.append(client.call("step", handle, obs, reward, terminated, truncated, None))
            _, reward, terminated, truncated = scripted(i)
        info = client.call("info", handle)
    assert actions == expected
    assert info[b"updates"] == reference.updates
    assert info[b"loss"] == reference.last_metrics()["loss"]


def test_bad_step_input_is_refused_before_anything_is_deferred():
    with PortClient() as client:
        handle = client.call("new_agent", {Atom(k): v for k, v in CONFIG.items()})
        with pytest.raises(RemoteError, match="obs has shape"):
            client.call("step", handle, [0.0, 1.0], 0.0, False, False, None)
        assert client.call("info", handle)[b"env_steps"] == 0
        assert client.call("step", handle, scripted(0)[0], 0.0, False, False, None) in (0, 1)
