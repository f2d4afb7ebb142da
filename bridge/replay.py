"""Replay: a preallocated numpy ring of packed n-step transitions, uniform or prioritized.

n-step returns are formed when transitions arrive, per env slot, so they never cross an
episode end: when an episode ends every pending transition is flushed with the steps it
has. `terminated` zeroes the bootstrap discount; `truncated` (a time limit) keeps it, and
bootstraps from the final observation.

Rows are stored already packed in the layout `bridge.learner` reads, so a sample is one
fancy-index gather and one host-to-device transfer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bridge.learner import packed_width


class SumTree:
    """Binary sum tree over `capacity` leaves: O(log n) priority update and proportional sampling."""

    def __init__(self, capacity: int):
        self.leaves = 1 << max(0, (capacity - 1).bit_length())
        self.tree = np.zeros(2 * self.leaves, np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def update(self, idx: np.ndarray, priorities: np.ndarray) -> None:
        """Set leaf priorities (last write wins for repeated indices) and refresh their ancestors."""
        nodes = np.asarray(idx, np.int64) + self.leaves
        self.tree[nodes] = priorities
        nodes = np.unique(nodes // 2)
        while nodes[0] >= 1:
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]
            if nodes[0] == 1:
                break
            nodes = np.unique(nodes // 2)

    def find(self, mass: np.ndarray) -> np.ndarray:
        """Leaf index for each cumulative mass in [0, total)."""
        node = np.ones(len(mass), np.int64)
        mass = mass.astype(np.float64)
        while node[0] < self.leaves:
            left = self.tree[2 * node]
            right = mass >= left
            mass = np.where(right, mass - left, mass)
            node = 2 * node + right
        return node - self.leaves


class ReplayBuffer:
    """Fixed-capacity ring of packed transitions with per-slot n-step accumulation.

    Args:
      capacity: transitions kept.
      obs_dim: observation size.
      gamma, n_step: discount and return horizon.
      prioritized, alpha, eps: proportional prioritized replay settings.
    """

    def __init__(self, capacity: int, obs_dim: int, gamma: float, n_step: int,
                 prioritized: bool = False, alpha: float = 0.6, eps: float = 1e-6):
        self.capacity, self.obs_dim, self.gamma, self.n_step = capacity, obs_dim, gamma, n_step
        self.prioritized, self.alpha, self.eps = prioritized, alpha, eps
        self.data = np.zeros((capacity, packed_width(obs_dim)), np.float32)
        self.data[:, -1] = 1.0  # importance weight column: 1 unless prioritized sampling rewrites it
        self.cursor = 0
        self.size = 0
        self.pending: dict[int, list[tuple[np.ndarray, int, float]]] = {}
        self.tree = SumTree(capacity) if prioritized else None
        self.max_priority = 1.0

    def __len__(self) -> int:
        return self.size

    # ----------------------------------------------------------------- adding

    def add(self, slot: int, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray,
            terminated: bool, truncated: bool) -> None:
        """Record one env step of `slot`; emits the n-step transitions that became complete."""
        queue = self.pending.setdefault(slot, [])
        queue.append((obs, int(action), float(reward)))
        if terminated or truncated:
            while queue:
                self._emit(queue, next_obs, terminated)
                queue.pop(0)
        elif len(queue) == self.n_step:
            self._emit(queue, next_obs, False)
            queue.pop(0)

    def _emit(self, queue: list, next_obs: np.ndarray, terminated: bool) -> None:
        ret = 0.0
        for k, (_, _, r) in enumerate(queue):
            ret += self.gamma ** k * r
        obs, action, _ = queue[0]
        d = self.obs_dim
        row = self.data[self.cursor]
        row[:d] = obs
        row[d] = action
        row[d + 1] = ret
        row[d + 2] = 0.0 if terminated else self.gamma ** len(queue)
        row[d + 3:2 * d + 3] = next_obs
        if self.tree is not None:
            self.tree.update(np.array([self.cursor]), np.array([self.max_priority ** self.alpha]))
        self.cursor = (self.cursor + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    # --------------------------------------------------------------- sampling

    def sample(self, batch_size: int, rng: np.random.Generator, beta: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """A packed (batch_size, width) float32 batch and the row indices it came from."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        if self.tree is None:
            idx = rng.integers(0, self.size, batch_size)
            return self.data[idx], idx
        total = self.tree.total
        mass = (np.arange(batch_size) + rng.random(batch_size)) * (total / batch_size)
        idx = np.minimum(self.tree.find(mass), self.size - 1)
        probs = self.tree.tree[idx + self.tree.leaves] / total
        weights = (self.size * probs) ** -beta
        batch = self.data[idx]
        batch[:, -1] = weights / weights.max()
        return batch, idx

    def update_priorities(self, idx: np.ndarray, abs_td: np.ndarray) -> None:
        """New priorities |td| + eps for sampled rows (prioritized replay only)."""
        if self.tree is None:
            return
        priorities = np.abs(np.asarray(abs_td, np.float64)) + self.eps
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.update(idx, priorities ** self.alpha)

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Contents, cursor and pending n-step queues, as msgpack-ready values."""
        return {
            "data": self.data[: self.size].tobytes() if self.size < self.capacity else self.data.tobytes(),
            "cursor": self.cursor,
            "size": self.size,
            "max_priority": self.max_priority,
            "tree": self.tree.tree.tobytes() if self.tree is not None else None,
            "pending": [[slot, [[np.asarray(o, np.float32).tobytes(), a, r] for o, a, r in q]]
                        for slot, q in sorted(self.pending.items())],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size, width = int(state["size"]), self.data.shape[1]
        rows = np.frombuffer(state["data"], np.float32).reshape(-1, width)
        if size > self.capacity or len(rows) != size:
            raise ValueError(f"replay contents hold {len(rows)} rows for size {size}, capacity {self.capacity}")
        self.data[:size] = rows
        self.cursor, self.size = int(state["cursor"]), size
        self.max_priority = float(state["max_priority"])
        if self.tree is not None:
            self.tree.tree[:] = np.frombuffer(state["tree"], np.float64)
        self.pending = {int(slot): [(np.frombuffer(o, np.float32).copy(), int(a), float(r)) for o, a, r in q]
                        for slot, q in state["pending"]}
