"""Prints a reference gymnasium CartPole-v1 trajectory for the Elixir CartPole test.

Usage: cartpole_reference.py SEED N_STEPS [random|balance]
`balance` picks actions with a simple controller, so episodes run into the
500-step truncation; `random` (the default) picks them uniformly.
Lines: `reset x x_dot theta theta_dot` (the float64 start state gymnasium drew) and
`step action o0 o1 o2 o3 reward terminated truncated` (the float32 observation).
"""
import sys

import gymnasium as gym
import numpy as np


def main(seed: int, n_steps: int, policy: str) -> None:
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    print("reset", *map(repr, env.unwrapped.state.tolist()))
    for _ in range(n_steps):
        if policy == "balance":
            action = int(obs[2] + 0.5 * obs[3] + 0.01 * obs[0] > 0)
        else:
            action = int(rng.integers(0, 2))
        obs, reward, terminated, truncated, _ = env.step(action)
        print("step", action, *map(repr, obs.tolist()), repr(float(reward)), int(terminated), int(truncated))
        if terminated or truncated:
            obs, _ = env.reset()
            print("reset", *map(repr, env.unwrapped.state.tolist()))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "random")
