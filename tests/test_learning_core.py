"""Config validation, epsilon schedules, the double-DQN target, agent input checks, checkpoints."""

import math
import os

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bridge import checkpoint
from bridge.agent import Agent
from bridge.config import DQNConfig, preset
from bridge.learner import td_target

SMALL = {"hidden_sizes": [16, 16], "batch_size": 16, "buffer_size": 300, "learning_starts": 40,
         "target_update_interval": 25, "eps_decay_steps": 200}


# ------------------------------------------------------------------ config

def test_config_accepts_str_bytes_and_atom_like_keys_and_keyword_lists():
    class Atom(bytes):  # what ErlPort's Python side hands over for an atom
        pass

    c = DQNConfig.from_mapping({b"lr": 3e-4, Atom(b"gamma"): 0.9, "loss": b"mse", "hidden_sizes": [32]})
    assert (c.lr, c.gamma, c.loss, c.hidden_sizes) == (3e-4, 0.9, "mse", (32,))
    assert DQNConfig.from_mapping([(Atom(b"n_step"), 5)]).n_step == 5
    assert DQNConfig.from_mapping({"dueling": Atom(b"true")}).dueling is True
    assert DQNConfig.from_mapping({"obs_dim": Atom(b"nil")}).obs_dim is None


@pytest.mark.parametrize("mapping, fragment", [
    ({"learning_rate": 1e-3}, "unknown config key 'learning_rate'; allowed keys: env_id, seed"),
    ({"lr": "fast"}, "config lr must be a finite number, got 'fast'"),
    ({"lr": float("nan")}, "config lr must be a finite number"),
    ({"batch_size": 12.5}, "config batch_size must be an integer"),
    ({"dueling": 1}, "config dueling must be true or false"),
    ({"loss": "l1"}, "config loss='l1' is not allowed; use one of: huber, mse"),
    ({"optimizer": "sgd"}, "use one of: adam, rmsprop, adamw"),
    ({"gamma": 1.5}, "config gamma=1.5 must be within [0, 1]"),
    ({"batch_size": 0}, "config batch_size=0 must be > 0"),
    ({"hidden_sizes": [64, -1]}, "hidden_sizes=[64, -1] must be a non-empty list of positive ints"),
    ({"batch_size": 512, "buffer_size": 100}, "batch_size=512 must not exceed buffer_size=100"),
    ("lr=1", "config must be a map or a keyword list"),
])
def test_bad_configs_are_refused_naming_the_key(mapping, fragment):
    with pytest.raises(ValueError) as err:
        DQNConfig.from_mapping(mapping)
    assert fragment in str(err.value)


def test_presets_exist_for_cartpole_and_are_valid():
    assert preset("CartPole-v1") == DQNConfig()
    assert preset("Acrobot-v1").hidden_sizes == (128, 128)


# ----------------------------------------------------------------- epsilon

def test_linear_epsilon_schedule():
    c = DQNConfig.from_mapping({"eps_start": 1.0, "eps_end": 0.1, "eps_decay_steps": 100})
    assert [c.epsilon(s) for s in (0, 50, 100, 10_000)] == pytest.approx([1.0, 0.55, 0.1, 0.1])


def test_exponential_epsilon_schedule_is_the_forum_formula():
    c = DQNConfig.from_mapping({"eps_schedule": "exponential", "eps_start": 0.9, "eps_end": 0.05, "eps_decay": 1000})
    for step in (0, 1, 500, 1000, 5000):
        assert c.epsilon(step) == pytest.approx(0.05 + (0.9 - 0.05) * math.exp(-step / 1000))


def test_agent_epsilon_follows_env_steps():
    agent = Agent(DQNConfig.from_mapping({**SMALL, "eps_start": 1.0, "eps_end": 0.0, "eps_decay_steps": 10}))
    o = np.zeros(4, np.float32)
    for _ in range(5):
        agent.observe(o, 0, 1.0, o, False, False)
    assert agent.epsilon == pytest.approx(0.5)
    assert agent.info()["epsilon"] == pytest.approx(0.5)


# ---------------------------------------------------------------- TD target

def test_double_dqn_target_matches_a_hand_computed_value():
    q_next_online = jnp.array([[1.0, 5.0], [4.0, 2.0]])  # online picks a*=1 for row 0, a*=0 for row 1
    q_next_target = jnp.array([[10.0, 3.0], [7.0, 20.0]])
    returns = jnp.array([1.0, 2.0])
    discounts = jnp.array([0.9 ** 3, 0.0])  # row 1 terminated
    double = td_target(q_next_online, q_next_target, returns, discounts, double_dqn=True)
    assert np.asarray(double) == pytest.approx([1.0 + 0.729 * 3.0, 2.0])
    vanilla = td_target(q_next_online, q_next_target, returns, discounts, double_dqn=False)
    assert np.asarray(vanilla) == pytest.approx([1.0 + 0.729 * 10.0, 2.0])


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    agent = Agent(DQNConfig.from_mapping({**SMALL, "learning_starts": 0, "n_step": 1, "lr": 1e-2}))
    rng = np.random.default_rng(0)
    for _ in range(64):
        o = rng.normal(size=4).astype(np.float32)
        agent.observe(o, int(rng.integers(2)), 1.0, o, True, False)
    first = agent.optimize()["loss"]
    for _ in range(200):
        last = agent.optimize()
    assert last["updates"] == 201
    assert last["loss"] < first / 10


def test_hard_target_copies_every_interval():
    agent = Agent(DQNConfig.from_mapping({**SMALL, "learning_starts": 0, "target_update_interval": 3}))
    o = np.ones(4, np.float32)
    for _ in range(20):
        agent.observe(o, 0, 1.0, o, False, False)
    same = lambda: all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(agent.state.params),
                                                            jax.tree.leaves(agent.state.target_params)))
    agent.optimize()
    assert not same()
    agent.optimize()
    agent.optimize()
    assert same()


def test_soft_target_moves_by_tau():
    agent = Agent(DQNConfig.from_mapping({**SMALL, "learning_starts": 0, "target_update": "soft", "tau": 0.5}))
    o = np.ones(4, np.float32)
    for _ in range(20):
        agent.observe(o, 0, 1.0, o, False, False)
    before = [np.asarray(x) for x in jax.tree.leaves(agent.state.target_params)]
    agent.optimize()
    online = [np.asarray(x) for x in jax.tree.leaves(agent.state.params)]
    after = [np.asarray(x) for x in jax.tree.leaves(agent.state.target_params)]
    for b, o_, a in zip(before, online, after):
        np.testing.assert_allclose(a, 0.5 * b + 0.5 * o_, rtol=1e-6, atol=1e-7)


def test_dueling_network_trains():
    agent = Agent(DQNConfig.from_mapping({**SMALL, "learning_starts": 0, "dueling": True, "prioritized": True}))
    o = np.ones(4, np.float32)
    for _ in range(20):
        agent.observe(o, 1, 1.0, o, False, False)
    assert np.isfinite(agent.optimize()["loss"])
    assert agent.act(o, greedy=True) in (0, 1)


# ------------------------------------------------------------ agent inputs

def test_agent_reads_dims_from_the_env_id():
    agent = Agent(DQNConfig.from_mapping({**SMALL, "env_id": "Acrobot-v1"}))
    assert (agent.obs_dim, agent.n_actions) == (6, 3)
    with pytest.raises(ValueError, match="env_id='NoSuchEnv-v0' is not a gymnasium env"):
        Agent({"env_id": "NoSuchEnv-v0"})


def test_act_accepts_one_observation_or_a_batch():
    agent = Agent(SMALL)
    assert isinstance(agent.act([0.0, 0.1, 0.0, -0.1]), int)
    batch = agent.act(np.zeros((5, 4)), greedy=True)
    assert batch.shape == (5,) and set(batch.tolist()) <= {0, 1}


@pytest.mark.parametrize("call, fragment", [
    (lambda a: a.act([0.0, 1.0]), "obs has shape [2]; expected [4] or [n_envs, 4]"),
    (lambda a: a.act([0.0, float("nan"), 0.0, 0.0]), "non-finite value"),
    (lambda a: a.act("abc"), "obs must be a list of 4 numbers"),
    (lambda a: a.observe([0.0] * 4, 2, 1.0, [0.0] * 4, False, False), "action 2 is out of range; allowed actions are 0..1"),
    (lambda a: a.observe([0.0] * 4, 1, float("inf"), [0.0] * 4, False, False), "reward contains a non-finite value"),
    (lambda a: a.observe([0.0] * 4, 1, 1.0, [0.0] * 3, False, False), "next_obs has shape [3]"),
    (lambda a: a.observe([0.0] * 4, 1, 1.0, [0.0] * 4, "no", False), "terminated must be true/false"),
    (lambda a: a.step([[0.0] * 4] * 2, [1.0], [False] * 2, [False] * 2), "reward has shape [1]; expected one value"),
])
def test_refused_input_names_the_problem_and_changes_nothing(call, fragment):
    agent = Agent(SMALL)
    agent.step([0.0] * 4)
    before = (agent.env_steps, len(agent.replay), agent.rng.bit_generator.state, dict(agent.prev_action))
    with pytest.raises(ValueError) as err:
        call(agent)
    assert fragment in str(err.value)
    assert (agent.env_steps, len(agent.replay), agent.rng.bit_generator.state, dict(agent.prev_action)) == before


def test_fused_step_stores_one_transition_per_slot_and_uses_final_obs():
    agent = Agent({**SMALL, "n_step": 1})
    first = np.array([[0.1] * 4, [0.2] * 4], np.float32)
    a0 = agent.step(first)
    assert agent.env_steps == 0 and len(a0) == 2
    reset_obs = np.array([[0.3] * 4, [0.9] * 4], np.float32)
    final = np.array([[0.0] * 4, [0.5] * 4], np.float32)
    agent.step(reset_obs, [1.0, 2.0], [False, True], [False, False], final_obs=final)
    assert agent.env_steps == 2 and agent.episodes == 1
    d = agent.replay.data
    assert d[0, :4].tolist() == pytest.approx([0.1] * 4) and d[0, 4] == a0[0]
    assert d[0, 7:11].tolist() == pytest.approx([0.3] * 4)  # slot 0 went on: next obs is the new obs
    assert d[1, 7:11].tolist() == pytest.approx([0.5] * 4)  # slot 1 ended: next obs is its final obs
    assert d[1, 6] == 0.0  # terminated: no bootstrap


# -------------------------------------------------------------- checkpoints

def _drive(agent, env, obs, steps, action=None):
    """Fused-step training for `steps` env steps; starts by acting on `obs` unless given `action`."""
    if action is None:
        action = agent.step(obs)
    for _ in range(steps):
        obs, r, term, trunc, _ = env.step(action)
        final = None
        if term or trunc:
            final, (obs, _) = obs, env.reset()
        action = agent.step(obs, r, term, trunc, final_obs=final)
    return obs


def _leaves(agent):
    return [np.asarray(x) for x in jax.tree.leaves((agent.state.params, agent.state.target_params,
                                                     agent.state.opt_state))]


def test_step_acts_with_the_params_from_when_the_previous_step_began():
    """The fused step acts one training round behind: with the online params as they
    were when the previous step began, so it never waits for the round still computing.
    Checked against both neighbours: the action is not that of the current params."""
    from bridge import learner, network

    agent = Agent(DQNConfig(seed=2, hidden_sizes=(16,), learning_starts=32, batch_size=16,
                            eps_start=0.0, eps_end=0.0, lr=0.05))
    layout = agent.layout

    def host(flat):
        return network.unflatten(np.asarray(flat), layout)

    rng = np.random.default_rng(0)
    agent.step(rng.normal(size=4).astype(np.float32))
    previous = agent.flat_params  # the params when the step before the next one began
    told_apart = 0
    for _ in range(300):
        obs = rng.normal(size=4).astype(np.float32)
        stale, current = host(previous), host(agent.flat_params)
        previous = agent.flat_params
        action = agent.step(obs, 1.0, False, False)
        assert action == int(learner.greedy_actions(stale, obs[None], False)[0])
        told_apart += action != int(learner.greedy_actions(current, obs[None], False)[0])
    assert agent.updates > 250
    assert told_apart > 5


@pytest.mark.parametrize("n_step", [1, 3])
def test_the_one_slot_step_is_the_general_step_for_a_batch_of_one(n_step):
    """`step` on one slot takes `_step_one`; the general per-slot `_step` on a batch of
    one must give the same actions, replay rows, counters and params."""
    config = DQNConfig.from_mapping({**SMALL, "seed": 11, "n_step": n_step, "train_freq": 2})
    one, general = Agent(config), Agent(config)
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=5)
    reward, term, trunc, final = 0.0, False, False, obs
    for _ in range(600):
        batch = np.asarray(obs, np.float32)[None]
        fin = np.asarray(final, np.float32)[None]
        a = one._step_one(batch, reward, term, trunc, fin, False)
        b = general._step(batch, np.array([reward]), np.array([term]), np.array([trunc]), fin)
        assert b.dtype == np.int32 and b.tolist() == [a]
        obs, reward, term, trunc, _ = env.step(a)
        final = obs
        if term or trunc:
            obs, _ = env.reset()
    assert one.updates == general.updates > 200
    assert (one.env_steps, one.episodes, one.vector_steps) == (general.env_steps, general.episodes,
                                                               general.vector_steps)
    np.testing.assert_array_equal(one.replay.data, general.replay.data)
    np.testing.assert_array_equal(np.asarray(one.flat_params), np.asarray(general.flat_params))


@pytest.mark.parametrize("prioritized", [False, True])
def test_resume_from_checkpoint_is_bit_identical_to_a_straight_run(tmp_path, prioritized):
    config = DQNConfig.from_mapping({**SMALL, "seed": 7, "prioritized": prioritized})

    def run(split):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=3)
        agent = Agent(config)
        obs = _drive(agent, env, obs, split)
        if split < 400:
            path = tmp_path / f"mid-{prioritized}.ckpt"
            agent.save(path)
            del agent
            agent = Agent.load(path)
            # the fused step remembers the last action; continue from it exactly
            _drive(agent, env, obs, 400 - split, action=agent.prev_action[0])
        return agent

    straight = run(400)
    resumed = run(170)
    assert straight.updates == resumed.updates > 100
    for a, b in zip(_leaves(straight), _leaves(resumed)):
        assert a.tobytes() == b.tobytes()
    assert np.array_equal(straight.replay.data, resumed.replay.data)
    assert straight.rng.bit_generator.state == resumed.rng.bit_generator.state


def test_truncated_foreign_and_corrupt_checkpoints_are_refused(tmp_path):
    agent = Agent(SMALL)
    good = tmp_path / "good.ckpt"
    agent.save(good)
    raw = good.read_bytes()

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="is not a dqn_bridge checkpoint"):
        Agent.load(truncated)

    foreign = tmp_path / "foreign.ckpt"
    foreign.write_bytes(b"PK\x03\x04 this is a zip, not a checkpoint")
    with pytest.raises(ValueError, match="is not a dqn_bridge checkpoint"):
        Agent.load(foreign)

    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupt|not a dqn_bridge checkpoint"):
        Agent.load(corrupt)

    with pytest.raises(ValueError, match="cannot read checkpoint"):
        Agent.load(tmp_path / "missing.ckpt")
    assert Agent.load(good).env_steps == 0  # the good file still loads


def test_a_failed_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    agent = Agent(SMALL)
    path = tmp_path / "agent.ckpt"
    agent.save(path)
    agent.observe([0.0] * 4, 1, 1.0, [0.0] * 4, False, False)

    def crash(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        agent.save(path)
    monkeypatch.undo()
    assert Agent.load(path).env_steps == 0
    assert [p.name for p in tmp_path.iterdir()] == ["agent.ckpt"]  # no temp file left behind


def test_checkpoint_version_is_checked(tmp_path):
    import msgpack

    path = tmp_path / "future.ckpt"
    path.write_bytes(msgpack.packb({"format": checkpoint.FORMAT, "version": 99, "crc32": 0, "body": b""}))
    with pytest.raises(ValueError, match="format version 99; this dqn_bridge reads version 1"):
        Agent.load(path)


def test_train_freq_counts_vector_steps_so_n_envs_share_one_training_round():
    agent = Agent({**SMALL, "learning_starts": 0, "n_step": 1, "batch_size": 4, "train_freq": 2, "gradient_steps": 3})
    obs = np.zeros((4, 4), np.float32)
    agent.step(obs)
    for _ in range(10):
        agent.step(obs, 1.0, False, False)
    assert agent.env_steps == 40 and agent.vector_steps == 10
    assert agent.updates == (10 // 2) * 3


def test_presets_fill_only_the_fields_not_given():
    c = DQNConfig.for_env({"env_id": "Acrobot-v1", "lr": 1e-3})
    assert c.hidden_sizes == (128, 128) and c.lr == 1e-3 and c.target_update_interval == 500
    assert DQNConfig.for_env({"hidden_sizes": [8]}) == DQNConfig(hidden_sizes=(8,))
    with pytest.raises(ValueError, match="unknown config key 'lrate'"):
        DQNConfig.for_env({"env_id": "Acrobot-v1", "lrate": 1})


def test_begin_episodes_makes_the_next_step_only_act():
    agent = Agent({**SMALL, "n_step": 3})
    obs = np.zeros((2, 4), np.float32)
    agent.step(obs)
    agent.step(obs, 1.0, False, False)
    assert agent.env_steps == 2 and len(agent.replay.pending[0]) == 1
    agent.begin_episodes()
    agent.step(obs + 1, 1.0, False, False)  # envs moved on: no transition joins old and new
    assert agent.env_steps == 2 and agent.replay.pending == {} and len(agent.replay) == 0
    agent.step(obs, 1.0, False, False)
    assert agent.env_steps == 4


def test_checkpoints_store_the_networks_and_moments_per_layer(tmp_path):
    """The learner keeps its params flat; a checkpoint still holds one (weight, bias) pair
    per layer for the online and target nets and for each optimizer moment, the format
    checkpoints have always had, so files of either layout load alike."""
    from bridge import checkpoint, network

    agent = Agent({**SMALL, "learning_starts": 0, "dueling": True})
    o = np.ones(4, np.float32)
    for _ in range(20):
        agent.observe(o, 1, 1.0, o, False, False)
    agent.optimize()
    path = tmp_path / "a.ckpt"
    agent.save(path)
    body = checkpoint.read(path)
    shapes = [list(shape) for pair in agent.layout for _, _, shape in pair]
    tree = network.init(jax.random.PRNGKey(0), 4, SMALL["hidden_sizes"], 2, True)
    assert shapes == [list(x.shape) for x in jax.tree.leaves(tree)] and len(shapes) == 2 * len(tree)
    for field in ("params", "target_params"):
        assert [p["shape"] for p in body[field]] == shapes
    # adam: its step count, then the first and the second moment, each per layer
    assert [p["shape"] for p in body["opt_state"]] == [[]] + shapes * 2
    online = [checkpoint._unpack_array(p) for p in body["params"]]
    for got, want in zip(online, jax.tree.leaves(network.unflatten(np.asarray(agent.state.params), agent.layout))):
        np.testing.assert_array_equal(got, want)
    restored = Agent.load(path)
    for a, b in zip(jax.tree.leaves(agent.state), jax.tree.leaves(restored.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("user_flags, expected", [
    (None, "--xla_cpu_enable_concurrency_optimized_scheduler=false"),
    ("--xla_cpu_use_xnnpack=true", "--xla_cpu_use_xnnpack=true --xla_cpu_enable_concurrency_optimized_scheduler=false"),
    ("--xla_cpu_enable_concurrency_optimized_scheduler=true", "--xla_cpu_enable_concurrency_optimized_scheduler=true"),
])
def test_xla_defaults_are_added_to_the_users_flags_never_over_them(user_flags, expected):
    """Importing bridge adds its XLA defaults to XLA_FLAGS before JAX starts its backend;
    a flag the user set wins, and the user's other flags stay."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if user_flags is not None:
        env["XLA_FLAGS"] = user_flags
    out = subprocess.run([sys.executable, "-c", "import os, bridge.agent; print(os.environ['XLA_FLAGS'])"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


@pytest.mark.parametrize("version, added", [("0.10.2", True), ("0.11.0", True), ("1.0", True),
                                            ("0.9.9", False), ("0.4.30", False), ("", False),
                                            (None, False), ("dev-build", False)])
def test_xla_defaults_only_for_the_jaxlib_releases_that_know_them(version, added):
    """XLA aborts on a flag it does not know: older (or unreadable) jaxlib versions get
    the user's XLA_FLAGS untouched."""
    from bridge import XLA_DEFAULTS, _with_defaults

    got = _with_defaults("--xla_cpu_use_xnnpack=true", version)
    assert got == ("--xla_cpu_use_xnnpack=true " + " ".join(XLA_DEFAULTS) if added
                   else "--xla_cpu_use_xnnpack=true")
