"""The in-process training loop behind `python -m bridge train` and `bench solve`.

Same agent, same config and same checkpoints as the port: only the env lives in Python.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from bridge.agent import Agent
from bridge.config import DQNConfig

METRICS_COLUMNS = ["step", "episode", "episode_return", "episode_length", "epsilon", "loss",
                   "eval_return", "steps_per_second"]


def evaluate(agent: Agent, env_id: str, episodes: int, seed: int) -> list[float]:
    """Greedy returns of `episodes` episodes, run side by side: one batched `act` per step."""
    envs = [gym.make(env_id) for _ in range(episodes)]
    try:
        obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
        returns = np.zeros(episodes)
        live = np.ones(episodes, bool)
        while live.any():
            idx = np.flatnonzero(live)
            actions = agent.act(obs[idx], greedy=True)
            for i, a in zip(idx, actions):
                o, r, term, trunc, _ = envs[i].step(int(a))
                obs[i] = o
                returns[i] += r
                live[i] = not (term or trunc)
        return returns.tolist()
    finally:
        for env in envs:
            env.close()


@dataclass
class TrainResult:
    """What a training run measured."""

    steps: int
    wall_seconds: float  # everything: agent creation and JIT compilation included
    steps_per_second: float  # env steps per second of the training loop (after the agent is built)
    best_eval: float = -math.inf  # best mean greedy return seen
    best_step: int | None = None  # env step at which it was seen
    solved_step: int | None = None  # first env step whose eval reached the target
    solved_seconds: float | None = None  # wall seconds (including JIT) to that eval
    cpu_us_per_step: float | None = None  # CPU time of all the process's threads per env step, in the loop
    evals: list[tuple[int, float]] = field(default_factory=list)


class _Progress:
    """One live terminal line: step, steps/s, last return, epsilon, eval."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.last = total, enabled, 0.0

    def update(self, step: int, sps: float, ret: float | None, eps: float, best: float, force: bool = False):
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.2):
            return
        self.last = now
        width = 24
        filled = int(width * step / max(1, self.total))
        ret_text = f"{ret:7.1f}" if ret is not None else "      -"
        best_text = f"{best:6.1f}" if best > -math.inf else "     -"
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {step:>7}/{self.total} "
                         f"{sps:7.0f} steps/s  return {ret_text}  eps {eps:.3f}  best eval {best_text}")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


def train(config: DQNConfig, total_steps: int, *, eval_every: int = 1000, eval_episodes: int = 10,
          target_return: float | None = None, stop_when_solved: bool = False, run_dir: str | None = None,
          progress: bool = True, on_eval: Callable[[int, float], None] | None = None) -> tuple[Agent, TrainResult]:
    """Train on gymnasium `config.env_id` for `total_steps` env steps.

    Every `eval_every` steps, `eval_episodes` greedy episodes are run; the best-scoring
    params are kept as `best.ckpt` (when `run_dir` is set), and `target_return` marks the run
    solved. With `run_dir`: metrics.csv, config.json, final.ckpt, best.ckpt, summary.json and
    learning_curve.png are written there.
    """
    start = time.perf_counter()
    agent = Agent(config)  # compiles the train step
    loop_start, loop_cpu_start = time.perf_counter(), time.process_time()
    env = gym.make(config.env_id)
    result = TrainResult(0, 0.0, 0.0)
    writer = None
    if run_dir:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(agent.config.to_dict(), f, indent=2)
        metrics_file = open(os.path.join(run_dir, "metrics.csv"), "w", newline="")
        writer = csv.writer(metrics_file)
        writer.writerow(METRICS_COLUMNS)
    bar = _Progress(total_steps, progress)
    obs, _ = env.reset(seed=config.seed)
    action = agent.step(obs)
    episode, ep_return, ep_len, last_return = 0, 0.0, 0, None
    try:
        for step in range(1, total_steps + 1):
            obs, reward, terminated, truncated, _ = env.step(action)
            ep_return += reward
            ep_len += 1
            final = None
            if terminated or truncated:
                final = obs
                obs, _ = env.reset()
            action = agent.step(obs, reward, terminated, truncated, final_obs=final)
            elapsed = time.perf_counter() - start
            if final is not None:
                episode += 1
                last_return = ep_return
                if writer:
                    metrics = agent.last_metrics() or {}
                    writer.writerow([step, episode, ep_return, ep_len, f"{agent.epsilon:.4f}",
                                     _fmt(metrics.get("loss")), "", f"{step / elapsed:.1f}"])
                ep_return, ep_len = 0.0, 0
            if step % eval_every == 0:
                mean = float(np.mean(evaluate(agent, config.env_id, eval_episodes, seed=10_000 + step)))
                result.evals.append((step, mean))
                if writer:
                    writer.writerow([step, episode, "", "", f"{agent.epsilon:.4f}", "", f"{mean:.2f}",
                                     f"{step / elapsed:.1f}"])
                if mean > result.best_eval:
                    result.best_eval, result.best_step = mean, step
                    if run_dir:
                        agent.save(os.path.join(run_dir, "best.ckpt"))
                if on_eval:
                    on_eval(step, mean)
                if target_return is not None and mean >= target_return and result.solved_step is None:
                    result.solved_step = step
                    result.solved_seconds = time.perf_counter() - start
                    if stop_when_solved:
                        result.steps = step
                        break
            result.steps = step
            bar.update(step, step / elapsed, last_return, agent.epsilon, result.best_eval)
    finally:
        bar.update(result.steps, result.steps / max(1e-9, time.perf_counter() - start), last_return,
                   agent.epsilon, result.best_eval, force=True)
        bar.close()
        env.close()
        if writer:
            metrics_file.close()
    result.wall_seconds = time.perf_counter() - start
    result.steps_per_second = result.steps / (time.perf_counter() - loop_start)
    result.cpu_us_per_step = (time.process_time() - loop_cpu_start) / max(1, result.steps) * 1e6
    if run_dir:
        agent.save(os.path.join(run_dir, "final.ckpt"))
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump({"steps": result.steps, "wall_seconds": result.wall_seconds,
                       "steps_per_second": result.steps_per_second,
                       "cpu_us_per_step": result.cpu_us_per_step, "best_eval": result.best_eval,
                       "best_step": result.best_step, "solved_step": result.solved_step,
                       "solved_seconds": result.solved_seconds, "evals": result.evals}, f, indent=2)
    return agent, result


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.5g}"
