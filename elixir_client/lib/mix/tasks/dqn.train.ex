defmodule Mix.Tasks.Dqn.Train do
  @shortdoc "Trains a DQN agent from Elixir (Python holds the network)"

  @moduledoc """
  Trains a DQN agent with `DQNBridge.Loop`: Elixir steps the environment, the
  Python port process holds the JAX agent, one fused `step` call per env step
  (or per N env steps with `--envs N`).

      mix dqn.train --env CartPole-v1 --steps 20000 --seed 0 --name cartpole

  CartPole-v1 runs as the pure-Elixir `DQNBridge.Env.CartPole`; any other
  gymnasium id runs in Python through `DQNBridge.Env.Gym`.

  Results go to `RUNS_DIR/NAME/`: `metrics.csv` (one row per episode and per
  greedy evaluation, the same columns as `python -m bridge train`),
  `best.ckpt` (the agent at its best greedy evaluation), `final.ckpt`,
  `config.json`, `summary.json` and `learning_curve.png` (drawn by
  `python -m bridge plot`).

  ## Command line options

    * `--env ID` - gymnasium id (default `CartPole-v1`)
    * `--steps N` - env steps to train (default 20000)
    * `--seed N` - seed for the agent and the first reset (default 0)
    * `--name NAME` - run name (default `<env>-seed<seed>`)
    * `--runs-dir DIR` - folder of runs (default `runs`)
    * `--envs N` - vectorised envs stepped per agent call (default 1)
    * `--eval-every N` - env steps between greedy evaluations (default 1000)
    * `--eval-episodes N` - greedy episodes per evaluation (default 10)
    * `--target R` - mean greedy return that counts as solved (default 475)
    * `--stop-when-solved` - stop at the first evaluation reaching `--target`
    * `--set KEY=VALUE` - a `DQNConfig` field, repeatable (`--set lr=0.0005 --set hidden_sizes=[128,128]`)
    * `--gym` - run CartPole-v1 in gymnasium too, instead of the Elixir CartPole
    * `--python PATH` - the Python interpreter (default: `$DQN_BRIDGE_PYTHON` or `.venv/bin/python`)
    * `--no-progress` - no live progress line
    * `--no-cpu-split` - leave the BEAM and Python's threads where the OS puts them; by
      default, on Linux with more than one CPU, Python's main thread gets the last CPU
      to itself and the BEAM the others, for the length of the run
  """

  use Mix.Task

  alias DQNBridge.{Agent, Env, Loop}
  alias DQNBridge.Env.Vector
  alias DQNBridge.Loop.{Handlers, State}
  alias Mix.Tasks.Dqn.TaskSupport, as: Support

  @switches [
    env: :string,
    steps: :integer,
    seed: :integer,
    name: :string,
    runs_dir: :string,
    envs: :integer,
    eval_every: :integer,
    eval_episodes: :integer,
    target: :float,
    stop_when_solved: :boolean,
    set: [:string, :keep],
    gym: :boolean,
    python: :string,
    progress: :boolean,
    cpu_split: :boolean
  ]

  @defaults [
    env: "CartPole-v1",
    steps: 20_000,
    seed: 0,
    runs_dir: "runs",
    envs: 1,
    eval_every: 1_000,
    eval_episodes: 10,
    target: 475.0,
    stop_when_solved: false,
    set: [],
    gym: false,
    progress: true,
    cpu_split: true
  ]

  @impl Mix.Task
  def run(argv) do
    opts = Support.parse!("dqn.train", argv, @switches, @defaults)

    for key <- [:steps, :envs, :eval_every, :eval_episodes] do
      Support.positive!("dqn.train", String.replace(Atom.to_string(key), "_", "-"), opts[key])
    end

    overrides = Support.config_overrides!("dqn.train", opts[:set])
    python = Support.python_opt(opts[:python])
    Mix.Task.run("compile")

    run_dir = Path.join(opts[:runs_dir], opts[:name] || "#{opts[:env]}-seed#{opts[:seed]}")
    File.mkdir_p!(run_dir)
    config = [env_id: opts[:env], seed: opts[:seed]] ++ overrides

    run = fn server_args ->
      with ["--main-cpu", cpu | _] <- Enum.drop_while(server_args, &(&1 != "--main-cpu")) do
        Mix.shell().info(
          "CPU #{cpu} is kept for Python's main thread, the BEAM runs on the others " <>
            "(--no-cpu-split to leave both to the OS)"
        )
      end

      python_opts = Support.server_opts(python, server_args)
      agent = Support.start_agent!("dqn.train", config: config, python: python_opts)

      try do
        env = Support.make_env!("dqn.train", opts[:env], agent, opts[:gym])
        train(agent, env, run_dir, python, opts)
      after
        Agent.stop(agent)
      end
    end

    Support.with_python_cpu(opts[:cpu_split], run)
  end

  defp train(agent, env, run_dir, python, opts) do
    train_env = if opts[:envs] > 1, do: Vector.new(env, opts[:envs]), else: env
    path = &Path.join(run_dir, &1)

    loop =
      Loop.dqn(agent, train_env)
      |> Handlers.evaluate(every: opts[:eval_every], episodes: opts[:eval_episodes], env: env)
      |> Handlers.checkpoint(path.("best.ckpt"), best: true)
      |> Handlers.metrics_csv(path.("metrics.csv"))

    loop = if opts[:progress], do: Handlers.log(loop, every: 500), else: loop

    loop =
      if opts[:stop_when_solved],
        do: Handlers.early_stop(loop, opts[:target], on: :eval_return),
        else: loop

    state = Loop.run(loop, steps: opts[:steps], seed: opts[:seed])

    wall =
      System.convert_time_unit(System.monotonic_time() - state.started_at, :native, :microsecond) /
        1.0e6

    :ok = Agent.save(agent, path.("final.ckpt"))
    info = Agent.info(agent)
    File.write!(path.("config.json"), Support.json(info.config))
    summary = summary(state, wall, opts)
    File.write!(path.("summary.json"), Support.json(summary))
    Support.plot!(python, path.("metrics.csv"), path.("learning_curve.png"))
    if opts[:envs] > 1, do: Vector.close(train_env), else: Env.close(env)

    Mix.shell().info(
      "trained #{state.step} steps in #{fmt(wall, 1)} s (#{round(summary.steps_per_second)} steps/s); " <>
        "best greedy eval #{fmt(summary.best_eval, 1)} at step #{summary.best_step}"
    )

    if summary.solved_step,
      do: Mix.shell().info("reached #{fmt(opts[:target], 0)} at step #{summary.solved_step}")

    Mix.shell().info(
      "results in #{run_dir}/: metrics.csv, best.ckpt, final.ckpt, config.json, summary.json, learning_curve.png"
    )

    summary
  end

  defp summary(%State{} = state, wall, opts) do
    metrics = state.metrics

    solved_step =
      if metrics[:best_eval_return] && metrics.best_eval_return >= opts[:target],
        do: metrics.best_eval_step

    %{
      driver: "elixir",
      env_id: opts[:env],
      seed: opts[:seed],
      n_envs: opts[:envs],
      steps: state.step,
      episodes: state.episode,
      wall_seconds: wall,
      steps_per_second: state.step / wall,
      best_eval: metrics[:best_eval_return],
      best_step: metrics[:best_eval_step],
      final_eval: metrics[:eval_return],
      target: opts[:target],
      solved_step: solved_step,
      status: Atom.to_string(state.status)
    }
  end

  defp fmt(nil, _), do: "-"
  defp fmt(x, digits), do: :erlang.float_to_binary(x * 1.0, decimals: digits)
end
