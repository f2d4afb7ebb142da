defmodule Mix.Tasks.Dqn.Eval do
  @shortdoc "Reports the greedy return of a saved DQN agent"

  @moduledoc """
  Loads a checkpoint (written by `mix dqn.train`, `DQNBridge.Agent.save/2` or
  `python -m bridge train`) and plays greedy episodes, all stepped together
  with one batched `select_action` call per step.

      mix dqn.eval --name cartpole
      mix dqn.eval --checkpoint runs/cartpole/final.ckpt --episodes 20

  ## Command line options

    * `--checkpoint PATH` - the checkpoint to load
    * `--name NAME` - instead of `--checkpoint`: `RUNS_DIR/NAME/best.ckpt`
    * `--runs-dir DIR` - folder of runs (default `runs`)
    * `--episodes N` - greedy episodes (default 100)
    * `--seed N` - seed of the first episode; episode i uses seed + i (default 123456)
    * `--env ID` - gymnasium id (default: the checkpoint's `env_id`)
    * `--gym` - run CartPole-v1 in gymnasium too, instead of the Elixir CartPole
    * `--python PATH` - the Python interpreter
    * `--json` - print one JSON object instead of a sentence
  """

  use Mix.Task

  alias DQNBridge.{Agent, Env, Loop}
  alias Mix.Tasks.Dqn.TaskSupport, as: Support

  @switches [
    checkpoint: :string,
    name: :string,
    runs_dir: :string,
    episodes: :integer,
    seed: :integer,
    env: :string,
    gym: :boolean,
    python: :string,
    json: :boolean
  ]

  @defaults [runs_dir: "runs", episodes: 100, seed: 123_456, gym: false, json: false]

  @impl Mix.Task
  def run(argv) do
    opts = Support.parse!("dqn.eval", argv, @switches, @defaults)
    Support.positive!("dqn.eval", "episodes", opts[:episodes])
    checkpoint = checkpoint!(opts)
    python = Support.python_opt(opts[:python])
    Mix.Task.run("compile")

    agent = Support.start_agent!("dqn.eval", load: checkpoint, python: python)

    try do
      env_id = opts[:env] || Agent.info(agent).config.env_id
      env = Support.make_env!("dqn.eval", env_id, agent, opts[:gym])
      returns = Loop.evaluate(agent, env, episodes: opts[:episodes], seed: opts[:seed])
      Env.close(env)

      summary = %{
        checkpoint: checkpoint,
        env_id: env_id,
        episodes: opts[:episodes],
        mean: Support.mean(returns),
        std: Support.std(returns),
        min: Enum.min(returns),
        max: Enum.max(returns)
      }

      if opts[:json] do
        Mix.shell().info(String.replace(Support.json(summary), ~r/\n\s*/, " ") |> String.trim())
      else
        Mix.shell().info(
          "#{env_id}: mean return #{fmt(summary.mean, 1)} ± #{fmt(summary.std, 1)} over " <>
            "#{opts[:episodes]} greedy episodes (min #{fmt(summary.min, 0)}, max #{fmt(summary.max, 0)})"
        )
      end

      summary
    after
      Agent.stop(agent)
    end
  end

  defp checkpoint!(opts) do
    path =
      case {opts[:checkpoint], opts[:name]} do
        {nil, nil} ->
          Mix.raise(
            "mix dqn.eval: give --checkpoint PATH or --name NAME (a run under #{opts[:runs_dir]}/)"
          )

        {path, nil} ->
          path

        {nil, name} ->
          Path.join([opts[:runs_dir], name, "best.ckpt"])

        {_, _} ->
          Mix.raise("mix dqn.eval: give --checkpoint or --name, not both")
      end

    unless File.regular?(path), do: Mix.raise("mix dqn.eval: no checkpoint at #{path}")
    path
  end

  defp fmt(x, digits), do: :erlang.float_to_binary(x * 1.0, decimals: digits)
end
