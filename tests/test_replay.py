"""Replay buffer: ring wrap-around, n-step returns at episode ends, prioritized sampling."""

import numpy as np
import pytest

from bridge.replay import ReplayBuffer, SumTree

D = 2  # obs_dim in these tests


def obs(v):
    return np.full(D, v, np.float32)


def rows(buf):
    """Stored rows in insertion order, as (obs0, action, return, discount, next_obs0)."""
    order = [(buf.cursor + i) % buf.capacity for i in range(buf.capacity)] if buf.size == buf.capacity \
        else range(buf.size)
    return [(float(buf.data[i, 0]), int(buf.data[i, D]), float(buf.data[i, D + 1]), float(buf.data[i, D + 2]),
             float(buf.data[i, D + 3])) for i in order]


def test_one_step_transitions_are_stored_as_given():
    buf = ReplayBuffer(10, D, gamma=0.9, n_step=1)
    buf.add(0, obs(1), 1, 2.0, obs(2), False, False)
    buf.add(0, obs(2), 0, 3.0, obs(3), True, False)
    assert rows(buf) == [(1.0, 1, 2.0, pytest.approx(0.9), 2.0), (2.0, 0, 3.0, 0.0, 3.0)]


def test_ring_wraps_around_and_keeps_the_newest():
    buf = ReplayBuffer(4, D, gamma=0.5, n_step=1)
    for t in range(10):
        buf.add(0, obs(t), t % 2, float(t), obs(t + 1), False, False)
    assert len(buf) == 4
    assert buf.cursor == 10 % 4
    assert [r[0] for r in rows(buf)] == [6.0, 7.0, 8.0, 9.0]
    batch, idx = buf.sample(64, np.random.default_rng(0))
    assert set(batch[:, 0].tolist()) <= {6.0, 7.0, 8.0, 9.0}
    assert (idx < 4).all()


def test_n_step_return_and_discount_mid_episode():
    g = 0.9
    buf = ReplayBuffer(10, D, gamma=g, n_step=3)
    for t in range(4):
        buf.add(0, obs(t), 0, float(t + 1), obs(t + 1), False, False)
    # two complete 3-step transitions: from t=0 and from t=1
    assert rows(buf) == [
        (0.0, 0, pytest.approx(1 + g * 2 + g * g * 3), pytest.approx(g ** 3), 3.0),
        (1.0, 0, pytest.approx(2 + g * 3 + g * g * 4), pytest.approx(g ** 3), 4.0),
    ]


def test_n_step_never_crosses_a_terminated_episode_end():
    g = 0.9
    buf = ReplayBuffer(10, D, gamma=g, n_step=3)
    buf.add(0, obs(0), 0, 1.0, obs(1), False, False)
    buf.add(0, obs(1), 0, 1.0, obs(2), True, False)  # episode ends after 2 steps
    buf.add(0, obs(10), 1, 5.0, obs(11), False, False)  # next episode starts
    got = rows(buf)
    assert got == [
        (0.0, 0, pytest.approx(1 + g), 0.0, 2.0),  # terminated: no bootstrap
        (1.0, 0, pytest.approx(1.0), 0.0, 2.0),
    ]
    assert buf.pending[0][0][2] == 5.0 and len(buf.pending[0]) == 1


def test_truncation_keeps_bootstrapping_from_the_final_observation():
    g = 0.9
    buf = ReplayBuffer(10, D, gamma=g, n_step=3)
    buf.add(0, obs(0), 0, 1.0, obs(1), False, False)
    buf.add(0, obs(1), 0, 1.0, obs(2), False, True)
    assert rows(buf) == [
        (0.0, 0, pytest.approx(1 + g), pytest.approx(g ** 2), 2.0),
        (1.0, 0, pytest.approx(1.0), pytest.approx(g), 2.0),
    ]


def test_env_slots_accumulate_separately():
    buf = ReplayBuffer(10, D, gamma=1.0, n_step=2)
    buf.add(0, obs(0), 0, 1.0, obs(1), False, False)
    buf.add(1, obs(100), 0, 10.0, obs(101), False, False)
    buf.add(0, obs(1), 0, 1.0, obs(2), False, False)
    buf.add(1, obs(101), 0, 10.0, obs(102), False, False)
    assert rows(buf) == [(0.0, 0, 2.0, 1.0, 2.0), (100.0, 0, 20.0, 1.0, 102.0)]


def test_sum_tree_totals_and_proportional_search():
    tree = SumTree(5)
    tree.update(np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 0.0]))
    assert tree.total == 10.0
    assert tree.find(np.array([0.0, 0.99, 1.0, 2.99, 3.0, 5.99, 6.0, 9.99])).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    tree.update(np.array([3, 3]), np.array([7.0, 1.0]))  # last write wins
    assert tree.total == 7.0


def test_prioritized_sampling_follows_priorities_and_weights_correct_for_it():
    buf = ReplayBuffer(8, D, gamma=0.9, n_step=1, prioritized=True, alpha=1.0, eps=1e-6)
    for t in range(4):
        buf.add(0, obs(t), 0, 0.0, obs(t), False, False)
    buf.update_priorities(np.arange(4), np.array([1.0, 1.0, 1.0, 7.0]))
    rng = np.random.default_rng(0)
    counts = np.zeros(4)
    for _ in range(200):
        batch, idx = buf.sample(10, rng, beta=1.0)
        np.add.at(counts, idx, 1)
    share = counts / counts.sum()
    assert share[3] == pytest.approx(0.7, abs=0.03)
    assert share[:3] == pytest.approx([0.1, 0.1, 0.1], abs=0.03)
    batch, idx = buf.sample(16, rng, beta=1.0)
    # weight ∝ (N * P)^-beta, normalised by the batch maximum: rare rows weigh 1, the frequent one 1/7
    expected = np.where(idx == 3, 1 / 7, 1.0)
    assert batch[:, -1] == pytest.approx(expected, rel=1e-4)


def test_new_transitions_get_the_highest_priority_seen():
    buf = ReplayBuffer(8, D, gamma=0.9, n_step=1, prioritized=True, alpha=1.0)
    buf.add(0, obs(0), 0, 0.0, obs(0), False, False)
    buf.update_priorities(np.array([0]), np.array([5.0]))
    buf.add(0, obs(1), 0, 0.0, obs(1), False, False)
    assert buf.tree.tree[buf.tree.leaves + 1] == pytest.approx(5.0 + 1e-6)


def test_state_dict_round_trip_restores_contents_and_pending():
    buf = ReplayBuffer(5, D, gamma=0.9, n_step=3, prioritized=True)
    for t in range(9):
        buf.add(t % 2, obs(t), t % 2, float(t), obs(t + 1), t == 6, False)
    copy = ReplayBuffer(5, D, gamma=0.9, n_step=3, prioritized=True)
    copy.load_state_dict(buf.state_dict())
    assert np.array_equal(copy.data, buf.data)
    assert (copy.cursor, copy.size) == (buf.cursor, buf.size)
    assert np.array_equal(copy.tree.tree, buf.tree.tree)
    assert {k: [(o.tolist(), a, r) for o, a, r in q] for k, q in copy.pending.items()} == \
        {k: [(np.asarray(o).tolist(), a, r) for o, a, r in q] for k, q in buf.pending.items()}
