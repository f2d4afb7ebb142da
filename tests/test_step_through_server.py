"""`step` through the real server trains exactly as `Agent.step` does in process.

The server answers these one-slot `step` calls in its step lane, sending each action
before it runs the training round that is due; the actions it sends and the agent it
ends with must be those of an in-process agent fed the same stream, which trains before
`step` returns.
"""
from __future__ import annotations

import math

import pytest

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


def test_the_real_server_matches_in_process_training():
    """The actions and the agent `bridge serve` ends with are those of an in-process agent."""
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


def test_bad_step_input_is_refused_and_stores_nothing():
    with PortClient() as client:
        handle = client.call("new_agent", {Atom(k): v for k, v in CONFIG.items()})
        with pytest.raises(RemoteError, match="obs has shape"):
            client.call("step", handle, [0.0, 1.0], 0.0, False, False, None)
        assert client.call("info", handle)[b"env_steps"] == 0
        assert client.call("step", handle, scripted(0)[0], 0.0, False, False, None) in (0, 1)
