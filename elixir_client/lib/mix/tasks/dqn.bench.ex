defmodule Mix.Tasks.Dqn.Bench do
  @shortdoc "Measures the Elixir client: round trips and training steps/s"

  @moduledoc """
  Measures, in one run, what the Elixir side of the bridge costs:

    * round trips through one `DQNBridge.Python` port: `ping` (the echo) and
      `DQNBridge.Agent.select_action/3` (median and p99 µs), beside the time of the
      same `act` in process in Python, without the port;
    * training steps/s of the Elixir-driven loop (`DQNBridge.Loop`, fused `step`)
      with one pure-Elixir CartPole and with `--envs` of them vectorised, beside
      `python -m bridge train` on the same config, all without evaluations.

  Steps/s are counted as `python -m bridge train` counts them: from creating the
  agent to the last step.

  Writes `OUT/elixir-<date>.json` and prints a markdown table.

  ## Command line options

    * `--calls N` - timed round trips per kind (default 5000, after a warm-up)
    * `--steps N` - env steps per training run (default 20000)
    * `--seed N` - the agent's seed (default 0)
    * `--envs N` - vectorised CartPoles for the second Elixir run (default 8)
    * `--out DIR` - where the JSON goes (default `bench/results`)
    * `--python PATH` - the Python interpreter
  """

  use Mix.Task

  alias DQNBridge.{Agent, Loop, Python}
  alias DQNBridge.Env.{CartPole, Vector}
  alias Mix.Tasks.Dqn.TaskSupport, as: Support

  @switches [
    calls: :integer,
    steps: :integer,
    seed: :integer,
    envs: :integer,
    out: :string,
    python: :string
  ]
  @defaults [calls: 5_000, steps: 20_000, seed: 0, envs: 8, out: "bench/results"]

  @obs [0.01, -0.02, 0.03, 0.04]

  # Python's own act, timed in a loop in one process: the cost the port adds to.
  @act_script """
  import statistics, sys, time
  import numpy as np
  from bridge.agent import Agent
  from bridge.config import DQNConfig
  calls, seed = int(sys.argv[1]), int(sys.argv[2])
  agent = Agent(DQNConfig.from_mapping({"seed": seed, "eps_start": 0.0, "eps_end": 0.0}))
  obs = np.asarray(#{inspect(@obs)}, dtype=np.float32)
  samples = []
  for _ in range(calls + max(200, calls // 10)):
      t0 = time.perf_counter()
      agent.act(obs)
      samples.append(time.perf_counter() - t0)
  print(" ".join(repr(s * 1e6) for s in samples[-calls:]))
  """

  @impl Mix.Task
  def run(argv) do
    opts = Support.parse!("dqn.bench", argv, @switches, @defaults)

    for key <- [:calls, :steps, :envs],
        do: Support.positive!("dqn.bench", Atom.to_string(key), opts[key])

    python = Support.python_opt(opts[:python])
    Mix.Task.run("compile")
    info = &Mix.shell().info/1

    info.("round trips (#{opts[:calls]} calls each)...")
    latency = latency(opts, python)
    info.("training, Elixir loop, 1 env...")
    elixir_1 = elixir_training(opts, python, 1)
    info.("training, Elixir loop, #{opts[:envs]} vectorised envs...")
    elixir_n = elixir_training(opts, python, opts[:envs])
    info.("training, python -m bridge train...")
    python_sps = python_training(opts, python)

    result = %{
      kind: "elixir",
      date: Date.to_iso8601(Date.utc_today()),
      calls: opts[:calls],
      steps: opts[:steps],
      seed: opts[:seed],
      round_trips_us: latency,
      training_steps_per_second: %{
        "python_in_process" => python_sps,
        "elixir_1_env" => elixir_1,
        "elixir_#{opts[:envs]}_envs" => elixir_n
      },
      ratios: ratios(latency, python_sps, elixir_1, elixir_n)
    }

    File.mkdir_p!(opts[:out])
    path = Path.join(opts[:out], "elixir-#{result.date}.json")
    File.write!(path, Support.json(result))
    info.(table(result, opts[:envs]))
    info.("wrote #{path}")
    result
  end

  defp latency(opts, python) do
    {:ok, py} = Python.start_link(python_start_opts(python))

    try do
      {:ok, agent} =
        Agent.start_link(python: py, config: [seed: opts[:seed], eps_start: 0.0, eps_end: 0.0])

      n = opts[:calls]
      warmup = max(200, div(n, 10))

      echo = time_calls(warmup, n, fn -> {:ok, _} = Python.call(py, :ping, [@obs]) end)
      act = time_calls(warmup, n, fn -> Agent.select_action(agent, @obs) end)
      Agent.stop(agent)
      in_process = in_process_act(python, n, opts[:seed])

      %{
        "echo" => stats(echo),
        "select_action" => stats(act),
        "in_process_act" => stats(in_process)
      }
    after
      Python.stop(py)
    end
  end

  defp python_start_opts(nil), do: []
  defp python_start_opts(path), do: [executable: path]

  defp time_calls(warmup, n, fun) do
    for _ <- 1..warmup, do: fun.()

    for _ <- 1..n do
      t0 = System.monotonic_time()
      fun.()
      System.monotonic_time() - t0
    end
    |> Enum.map(&(System.convert_time_unit(&1, :native, :nanosecond) / 1000))
  end

  defp in_process_act(python, n, seed) do
    python = python || Python.default_executable()

    case System.cmd(python, ["-c", @act_script, "#{n}", "#{seed}"], cd: Python.project_root()) do
      {out, 0} -> out |> String.split() |> Enum.map(&String.to_float/1)
      {out, status} -> Mix.raise("timing act in Python failed (exit #{status}): #{out}")
    end
  end

  defp stats(samples) do
    sorted = Enum.sort(samples)
    n = length(sorted)

    median =
      if rem(n, 2) == 1,
        do: Enum.at(sorted, div(n, 2)),
        else: (Enum.at(sorted, div(n, 2) - 1) + Enum.at(sorted, div(n, 2))) / 2

    %{
      "median_us" => Float.round(median, 2),
      "p99_us" => Float.round(Enum.at(sorted, min(n - 1, trunc(0.99 * n))), 2),
      "n" => n
    }
  end

  defp elixir_training(opts, python, n_envs) do
    {:ok, py} = Python.start_link(python_start_opts(python))
    {:ok, _} = Python.call(py, :ping, [:warm])

    try do
      # Like `python -m bridge train`'s steps/s: the clock starts once the agent (and its
      # compiled train step) exists.
      {:ok, agent} = Agent.start_link(python: py, config: [seed: opts[:seed]])
      t0 = System.monotonic_time()
      env = if n_envs == 1, do: CartPole.new(), else: Vector.new(CartPole.new(), n_envs)
      state = agent |> Loop.dqn(env) |> Loop.run(steps: opts[:steps], seed: opts[:seed])

      seconds =
        System.convert_time_unit(System.monotonic_time() - t0, :native, :microsecond) / 1.0e6

      Agent.stop(agent)
      Float.round(state.step / seconds, 1)
    after
      Python.stop(py)
    end
  end

  defp python_training(opts, python) do
    python = python || Python.default_executable()
    runs_dir = Path.join(System.tmp_dir!(), "dqn_bench_#{System.unique_integer([:positive])}")

    args =
      ~w(-m bridge train --env CartPole-v1 --no-progress --name python) ++
        [
          "--steps",
          "#{opts[:steps]}",
          "--seed",
          "#{opts[:seed]}",
          "--eval-every",
          "#{opts[:steps] + 1}",
          "--runs-dir",
          runs_dir
        ]

    try do
      case System.cmd(python, args, cd: Python.project_root(), stderr_to_stdout: true) do
        {_, 0} -> read_steps_per_second(Path.join([runs_dir, "python", "summary.json"]))
        {out, status} -> Mix.raise("python -m bridge train failed (exit #{status}):\n#{out}")
      end
    after
      File.rm_rf(runs_dir)
    end
  end

  defp read_steps_per_second(summary) do
    with {:ok, text} <- File.read(summary),
         [_, value] <- Regex.run(~r/"steps_per_second":\s*([0-9.eE+-]+)/, text) do
      value |> Float.parse() |> elem(0) |> Float.round(1)
    else
      _ -> Mix.raise("#{summary} has no \"steps_per_second\"")
    end
  end

  defp ratios(latency, python_sps, elixir_1, elixir_n) do
    med = &latency[&1]["median_us"]
    p99 = &latency[&1]["p99_us"]

    %{
      "select_action / (echo + in_process_act), median (target <= 1.25)" =>
        Float.round(med.("select_action") / (med.("echo") + med.("in_process_act")), 3),
      "select_action / (echo + in_process_act), p99" =>
        Float.round(p99.("select_action") / (p99.("echo") + p99.("in_process_act")), 3),
      "elixir 1 env / python in process (target >= 1.0)" => Float.round(elixir_1 / python_sps, 3),
      "elixir vectorised / python in process (target >= 3.0)" =>
        Float.round(elixir_n / python_sps, 3)
    }
  end

  defp table(result, n_envs) do
    rt = result.round_trips_us
    sps = result.training_steps_per_second
    r = result.ratios
    row = fn name -> "| #{name} | #{rt[name]["median_us"]} | #{rt[name]["p99_us"]} |" end

    """

    | round trip (µs) | median | p99 |
    |---|---:|---:|
    #{row.("echo")}
    #{row.("in_process_act")}
    #{row.("select_action")}

    select_action / (echo + in-process act): #{r["select_action / (echo + in_process_act), median (target <= 1.25)"]} (median, target <= 1.25), #{r["select_action / (echo + in_process_act), p99"]} (p99)

    | training, CartPole-v1, #{result.steps} steps | steps/s | vs Python |
    |---|---:|---:|
    | `python -m bridge train` (in process, gymnasium) | #{sps["python_in_process"]} | 1.00 |
    | `Loop`, 1 Elixir CartPole | #{sps["elixir_1_env"]} | #{r["elixir 1 env / python in process (target >= 1.0)"]} |
    | `Loop`, #{n_envs} vectorised Elixir CartPoles | #{sps["elixir_#{n_envs}_envs"]} | #{r["elixir vectorised / python in process (target >= 3.0)"]} |
    """
  end
end
