"""`python -m bridge train|eval|plot|serve|bench` (also installed as `dqn-bridge`)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any, Sequence

from bridge.config import PRESETS, DQNConfig, preset
from bridge.threads import DEFAULT_NICE


def _set_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE (e.g. lr=0.0005), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word such as huber or adam
    return key.strip(), value


def build_config(args: argparse.Namespace) -> DQNConfig:
    """Preset for --env, then --config FILE, then each --set KEY=VALUE, then --seed."""
    overrides: dict[str, Any] = {}
    if args.config:
        with open(args.config) as f:
            overrides.update(json.load(f))
    overrides.update(dict(args.set or []))
    if args.seed is not None:
        overrides["seed"] = args.seed
    return preset(args.env, **overrides)


def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="CartPole-v1",
                   help=f"gymnasium env id (default CartPole-v1; tuned presets: {', '.join(PRESETS)})")
    p.add_argument("--seed", type=int, default=None, help="seed for network init, exploration and replay (default 0)")
    p.add_argument("--config", metavar="FILE", help="JSON file of DQNConfig fields applied over the preset")
    p.add_argument("--set", action="append", type=_set_option, metavar="KEY=VALUE",
                   help="override one DQNConfig field, repeatable (e.g. --set lr=5e-4 --set hidden_sizes=[128,128]); "
                        "VALUE is JSON or a bare word; see README for the list of fields")


def _cmd_train(args: argparse.Namespace) -> int:
    from bridge.plot import plot_learning_curve
    from bridge.threads import start_backend
    from bridge.train import train

    config = build_config(args)
    start_backend(args.xla_threads, args.xla_nice)
    run_dir = os.path.join(args.runs_dir, args.name or f"{config.env_id}-seed{config.seed}")
    _, result = train(config, args.steps, eval_every=args.eval_every, eval_episodes=args.eval_episodes,
                      target_return=args.target, stop_when_solved=args.stop_when_solved, run_dir=run_dir,
                      progress=not args.no_progress)
    png = plot_learning_curve(os.path.join(run_dir, "metrics.csv"))
    print(f"trained {result.steps} steps in {result.wall_seconds:.1f} s ({result.steps_per_second:.0f} steps/s); "
          f"best greedy eval {result.best_eval:.1f} at step {result.best_step}")
    if result.solved_step is not None:
        print(f"reached {args.target:g} at step {result.solved_step} ({result.solved_seconds:.1f} s)")
    print(f"results in {run_dir}/: metrics.csv, config.json, best.ckpt, final.ckpt, summary.json, "
          f"{os.path.basename(png)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from bridge.agent import Agent
    from bridge.train import evaluate

    agent = Agent.load(args.checkpoint)
    env_id = args.env or agent.config.env_id
    returns = evaluate(agent, env_id, args.episodes, seed=args.seed)
    summary = {"checkpoint": args.checkpoint, "env_id": env_id, "episodes": args.episodes,
               "mean": float(np.mean(returns)), "std": float(np.std(returns)),
               "min": float(np.min(returns)), "max": float(np.max(returns))}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{env_id}: mean return {summary['mean']:.1f} ± {summary['std']:.1f} over {args.episodes} greedy "
              f"episodes (min {summary['min']:.0f}, max {summary['max']:.0f})")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from bridge.plot import plot_learning_curve

    print(plot_learning_curve(args.metrics, args.output, args.title))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from bridge import serve

    return serve.main(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.kind == "solve":
        from bridge import bench_solve

        return bench_solve.main(args)
    from bridge import wirebench

    return wirebench.main(args.kind, args)


def results_path(kind: str, out_dir: str = "bench/results") -> str:
    """bench/results/<kind>-<YYYY-MM-DD>.json, creating the folder."""
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, f"{kind}-{datetime.date.today().isoformat()}.json")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bridge", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a DQN agent on a gymnasium env in process",
                       description="Train in process; writes runs/<name>/metrics.csv, config.json, best.ckpt, "
                                   "final.ckpt, summary.json and learning_curve.png.")
    _add_config_arguments(p)
    p.add_argument("--steps", type=int, default=20_000, help="env steps to train (default 20000)")
    p.add_argument("--name", help="run name: results go to RUNS_DIR/NAME (default <env>-seed<seed>)")
    p.add_argument("--runs-dir", default="runs", help="folder of runs (default runs)")
    p.add_argument("--eval-every", type=int, default=1000, help="env steps between greedy evaluations (default 1000)")
    p.add_argument("--eval-episodes", type=int, default=10, help="greedy episodes per evaluation (default 10)")
    p.add_argument("--target", type=float, default=475.0, help="mean greedy return that counts as solved (default 475)")
    p.add_argument("--stop-when-solved", action="store_true", help="stop at the first evaluation reaching --target")
    p.add_argument("--no-progress", action="store_true", help="no live progress line on stderr")
    p.add_argument("--xla-threads", type=int, default=0, metavar="N",
                   help="worker threads of JAX's CPU backend (default 0: one per CPU)")
    p.add_argument("--xla-nice", type=int, default=DEFAULT_NICE, metavar="N",
                   help="run those worker threads N nice steps below the training loop's thread, "
                        f"0-19 (default {DEFAULT_NICE}; 0: the same priority)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="run greedy episodes from a checkpoint",
                       description="Load a checkpoint and report the mean greedy return.")
    p.add_argument("checkpoint", help="a .ckpt file written by train, save or the Elixir client")
    p.add_argument("--episodes", type=int, default=100, help="greedy episodes (default 100)")
    p.add_argument("--seed", type=int, default=123_456, help="seed of the first episode; episode i uses seed+i")
    p.add_argument("--env", help="gymnasium env id (default: the checkpoint's env_id)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("plot", help="draw learning_curve.png from a metrics CSV",
                       description="Draw episode returns, their moving mean and greedy evaluations.")
    p.add_argument("metrics", help="metrics.csv from train or mix dqn.train")
    p.add_argument("-o", "--output", help="PNG path (default: learning_curve.png beside the CSV)")
    p.add_argument("--title", help="plot title (default: the run folder's name)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("serve", help="serve bridge.api over the ErlPort wire protocol",
                       description="Answer {:C, id, :'bridge.api', fun, args} frames (packet 4) on fds 3/4, "
                                   "or stdin/stdout with --use-stdio.")
    from bridge import serve

    serve.add_arguments(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("bench", help="benchmarks: solve, protocol, fuzz, soak",
                       description="solve: CartPole steps and seconds to solve, seeds 0-4. protocol: round trips "
                                   "through the server vs raw echo and in-process act. fuzz: random terms at the "
                                   "server. soak: 1,000,000 select_action calls, RSS growth. JSON goes to "
                                   "bench/results/.")
    p.add_argument("kind", choices=["solve", "protocol", "fuzz", "soak"], help="which benchmark")
    from bridge import bench_solve, wirebench

    bench_solve.add_arguments(p)
    wirebench.add_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
