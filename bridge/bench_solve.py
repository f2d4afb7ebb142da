"""`python -m bridge bench solve`: env steps and wall seconds to solve, one fresh process per seed.

Each seed runs `python -m bridge train --stop-when-solved` in its own interpreter, so the
seconds include JIT compilation. The best checkpoint that run kept is then scored on 100
fresh greedy episodes (seeds never used during training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("solve")
    g.add_argument("--seeds", default="0-4", help="solve: seeds as A-B or a comma list (default 0-4)")
    g.add_argument("--max-steps", type=int, default=15_000, help="solve: env-step budget per seed (default 15000)")
    g.add_argument("--target-return", type=float, default=475.0, help="solve: mean greedy return to reach (475)")
    g.add_argument("--final-episodes", type=int, default=100,
                   help="solve: fresh greedy episodes to score the kept best checkpoint (default 100)")
    g.add_argument("--solve-env", default="CartPole-v1", help="solve: env id (default CartPole-v1)")


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def run_seed(seed: int, args: argparse.Namespace, runs_dir: str) -> dict:
    from bridge.agent import Agent
    from bridge.train import evaluate

    cmd = [sys.executable, "-m", "bridge", "train", "--env", args.solve_env, "--seed", str(seed),
           "--steps", str(args.max_steps), "--eval-every", "1000", "--eval-episodes", "10",
           "--target", str(args.target_return), "--stop-when-solved", "--no-progress",
           "--runs-dir", runs_dir, "--name", f"seed{seed}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    process_seconds = time.perf_counter() - t0
    run_dir = os.path.join(runs_dir, f"seed{seed}")
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    agent = Agent.load(os.path.join(run_dir, "best.ckpt"))
    final = evaluate(agent, args.solve_env, args.final_episodes, seed=1_000_000 + seed * 1000)
    return {
        "seed": seed,
        "solved": summary["solved_step"] is not None,
        "env_steps_to_solve": summary["solved_step"],
        "wall_seconds_to_solve": summary["solved_seconds"],
        "process_wall_seconds": round(process_seconds, 2),
        "steps_per_second": round(summary["steps_per_second"], 1),
        "best_eval": summary["best_eval"],
        "best_checkpoint_mean_return_100": float(np.mean(final)),
        "best_checkpoint_min_return_100": float(np.min(final)),
        "evals": summary["evals"],
    }


def main(args: argparse.Namespace) -> int:
    from bridge.cli import results_path

    records = []
    print(f"{'seed':>4} {'solved at':>10} {'seconds':>8} {'process s':>9} {'steps/s':>8} {'best ckpt, 100 ep':>18}")
    with tempfile.TemporaryDirectory(prefix="solve-") as runs_dir:
        for seed in parse_seeds(args.seeds):
            r = run_seed(seed, args, runs_dir)
            records.append(r)
            steps = r["env_steps_to_solve"] if r["solved"] else "-"
            secs = f"{r['wall_seconds_to_solve']:.1f}" if r["solved"] else "-"
            print(f"{seed:>4} {steps:>10} {secs:>8} {r['process_wall_seconds']:>9.1f} {r['steps_per_second']:>8.0f} "
                  f"{r['best_checkpoint_mean_return_100']:>18.1f}", flush=True)
    ok = [r for r in records if r["solved"]]
    passed = (len(ok) == len(records)
              and all(r["wall_seconds_to_solve"] <= 10.0 for r in ok)
              and all(r["best_checkpoint_mean_return_100"] >= args.target_return for r in ok))
    out = {
        "benchmark": "solve",
        "env_id": args.solve_env,
        "target_return": args.target_return,
        "max_steps": args.max_steps,
        "targets": {"env_steps": args.max_steps, "wall_seconds": 10.0, "best_checkpoint_100_episodes": 475.0},
        "all_targets_met": passed,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "records": records,
    }
    path = results_path("solve", args.out_dir or "bench/results")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"solved {len(ok)}/{len(records)}; all targets met: {passed}; wrote {path}")
    return 0 if passed else 1
