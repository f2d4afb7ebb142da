defmodule Mix.Tasks.Dqn.Bench do
  @shortdoc "Measures the Elixir client: round trips and training steps/s"

  @moduledoc """
  Measures, in one run, what the Elixir side of the bridge costs:

    * round trips from Elixir (median and p99 µs): the echo of a
      `DQNBridge.Python` port whose Python side decodes nothing
      (`python -m bridge.echo --reply` answers each call with its own argument
      bytes), so it costs all of the port owner's work and none of the server's;
      a bare Port echo from the timing process (no port owner at all); `ping`
      through `bridge serve`; and `DQNBridge.Agent.select_action/3` — beside the
      in-process time of the same act in Python, without the port. The target
      compares select_action with the echo of the same port plus that act;
    * training steps/s of the Elixir-driven loop (`DQNBridge.Loop`, fused `step`)
      with one pure-Elixir CartPole and with `--envs` of them vectorised, beside
      `python -m bridge train` on the same config, all without evaluations. The
      three runs take turns for `--rounds` rounds and the medians are compared,
      so that a slow minute on a shared machine does not pick the winner; each
      Elixir loop's ratio to the Python run of its own round is given too, with
      its spread and how many rounds meet the target. The
      Elixir loops run as `mix dqn.train` runs them, with a CPU kept for Python's
      main thread (`--no-cpu-split` there). Beside each, the CPU time per env step
      of all of Python's threads and of the BEAM's (from /proc), which tells a loop
      bound by the CPUs from one that waits.

  Steps/s are counted as `python -m bridge train` counts them: from creating the
  agent to the last step.

  On a small VM a round trip between two CPUs pays for waking an idle one, which
  varies from run to run; `--cpu N` pins the BEAM and every Python process of the
  round-trip part to CPU N for stable numbers (the training part is never pinned).

  Writes `OUT/elixir-<date>.json` and prints markdown tables.

  ## Command line options

    * `--calls N` - timed round trips per kind (default 5000, after a warm-up)
    * `--steps N` - env steps per training run (default 20000)
    * `--rounds N` - training rounds, each running all three loops (default 3)
    * `--seed N` - the agent's seed (default 0)
    * `--envs N` - vectorised CartPoles for the second Elixir run (default 8)
    * `--cpu N` - pin the round-trip measurements to CPU N (needs `taskset`)
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
    rounds: :integer,
    seed: :integer,
    envs: :integer,
    cpu: :integer,
    out: :string,
    python: :string
  ]
  @defaults [calls: 5_000, steps: 20_000, rounds: 3, seed: 0, envs: 8, out: "bench/results"]

  @obs [0.01, -0.02, 0.03, 0.04]

  # Python's own act, timed in a loop in one process: the cost the port adds to.
  # `act` takes a numpy array; `act_values` (what the server's select_action lane
  # runs) the observation's floats. The target ratio uses the cheaper of the two.
  @act_script """
  import statistics, sys, time
  import numpy as np
  from bridge.agent import Agent
  from bridge.config import DQNConfig
  calls, seed = int(sys.argv[1]), int(sys.argv[2])
  agent = Agent(DQNConfig.from_mapping({"seed": seed, "eps_start": 0.0, "eps_end": 0.0}))
  obs = np.asarray(#{inspect(@obs)}, dtype=np.float32)
  values = tuple(obs.astype(float).tolist())
  for act, arg in ((agent.act, obs), (agent.act_values, values)):
      samples = []
      for _ in range(calls + max(200, calls // 10)):
          t0 = time.perf_counter()
          act(arg)
          samples.append(time.perf_counter() - t0)
      print(" ".join(repr(s * 1e6) for s in samples[-calls:]))
  """

  @impl Mix.Task
  def run(argv) do
    opts = Support.parse!("dqn.bench", argv, @switches, @defaults)

    for key <- [:calls, :steps, :rounds, :envs],
        do: Support.positive!("dqn.bench", Atom.to_string(key), opts[key])

    if opts[:cpu] && opts[:cpu] < 0,
      do: Mix.raise("mix dqn.bench: --cpu must be a CPU number (0 or more), got #{opts[:cpu]}")

    python = Support.python_opt(opts[:python])
    Mix.Task.run("compile")
    info = &Mix.shell().info/1

    pinned = if opts[:cpu], do: " pinned to CPU #{opts[:cpu]}", else: ""
    info.("round trips (#{opts[:calls]} calls each)#{pinned}...")
    latency = with_cpu(opts[:cpu], fn -> latency(opts, launcher(python, opts[:cpu])) end)
    # CPU time from /proc is in clock ticks; their rate is asked for once.
    training = training(Keyword.put(opts, :clock_ticks, clock_ticks()), python, info)

    result = %{
      kind: "elixir",
      date: Date.to_iso8601(Date.utc_today()),
      calls: opts[:calls],
      steps: opts[:steps],
      rounds: opts[:rounds],
      seed: opts[:seed],
      round_trips_pinned_to_cpu: opts[:cpu],
      round_trips_us: latency,
      training_steps_per_second: training.median,
      training_steps_per_second_by_round: training.rounds,
      training_cpu_us_per_step: training.cpu_median,
      training_cpu_us_per_step_by_round: training.cpu_rounds,
      cpus_available: cpus_available(),
      ratios: ratios(latency, training.median, opts[:envs]),
      training_ratios_by_round: paired_ratios(training.rounds, opts[:envs])
    }

    File.mkdir_p!(opts[:out])
    path = Path.join(opts[:out], "elixir-#{result.date}.json")
    File.write!(path, Support.json(result))
    info.(table(result, opts[:envs]))
    info.("wrote #{path}")
    result
  end

  # The CPUs this BEAM may run on (its schedulers' view of the machine).
  defp cpus_available do
    case :erlang.system_info(:logical_processors_available) do
      n when is_integer(n) -> n
      _ -> System.schedulers_online()
    end
  end

  # The executable and leading arguments that start Python: through taskset, pinned
  # to `cpu`, when one is given. (Port children are forked by erl_child_setup, not
  # by the BEAM's own threads, so pinning the BEAM alone would not pin them.)
  defp launcher(python, nil), do: {python || Python.default_executable(), []}

  defp launcher(python, cpu),
    do: {taskset!(), ["-c", "#{cpu}", python || Python.default_executable()]}

  defp taskset! do
    System.find_executable("taskset") ||
      Mix.raise("mix dqn.bench: --cpu needs taskset (util-linux)")
  end

  # Runs `fun` with this BEAM (all its threads) on one CPU; puts its CPU mask back
  # afterwards.
  defp with_cpu(nil, fun), do: fun.()

  defp with_cpu(cpu, fun) do
    pid = System.pid()
    taskset = taskset!()

    {out, 0} = System.cmd(taskset, ["-p", pid])
    mask = out |> String.trim() |> String.split(": ") |> List.last()

    case System.cmd(taskset, ["-a", "-p", "-c", "#{cpu}", pid], stderr_to_stdout: true) do
      {_, 0} -> :ok
      {out, _} -> Mix.raise("mix dqn.bench: cannot pin to CPU #{cpu}: #{String.trim(out)}")
    end

    try do
      fun.()
    after
      System.cmd(taskset, ["-a", "-p", mask, pid])
    end
  end

  # The four kinds of round trip take turns, call after call, so that a slow spell of
  # the machine lands on all of them alike.
  defp latency(opts, {exe, prefix} = launcher) do
    n = opts[:calls]
    warmup = max(200, div(n, 10))
    bare = open_bare_echo(launcher)

    {:ok, echo} =
      Python.start_link(executable: exe, args: prefix ++ ["-m", "bridge.echo", "--reply"])

    {:ok, py} = Python.start_link(executable: exe, args: prefix ++ ["-m", "bridge", "serve"])

    try do
      {:ok, agent} =
        Agent.start_link(python: py, config: [seed: opts[:seed], eps_start: 0.0, eps_end: 0.0])

      kinds = [
        {"bare_port_echo", fn -> bare_echo(bare) end},
        {"port_echo", fn -> {:ok, [@obs]} = Python.call(echo, :ping, [@obs]) end},
        {"ping", fn -> {:ok, @obs} = Python.call(py, :ping, [@obs]) end},
        {"select_action", fn -> true = is_integer(Agent.select_action(agent, @obs)) end}
      ]

      timed = interleaved(kinds, warmup, n)
      Agent.stop(agent)
      {in_process, in_process_values} = in_process_act(launcher, n, opts[:seed])

      timed
      |> Map.new(fn {name, samples} -> {name, stats(samples)} end)
      |> Map.merge(%{
        "in_process_act" => stats(in_process),
        "in_process_act_values" => stats(in_process_values)
      })
    after
      Python.stop(py)
      Python.stop(echo)
      Port.close(bare)
    end
  end

  defp interleaved(kinds, warmup, n) do
    for _ <- 1..warmup, {_, fun} <- kinds, do: fun.()

    rows =
      for _ <- 1..n do
        for {_, fun} <- kinds do
          t0 = System.monotonic_time()
          fun.()
          System.monotonic_time() - t0
        end
      end

    columns = Enum.zip_with(rows, & &1)

    for {{name, _}, column} <- Enum.zip(kinds, columns),
        into: %{},
        do: {name, Enum.map(column, &(System.convert_time_unit(&1, :native, :nanosecond) / 1000))}
  end

  # A Port opened as DQNBridge.Python opens its own, owned by the timing process, to a
  # child that copies frames back: no port owner process, no decoding anywhere.
  defp open_bare_echo({exe, prefix}) do
    Port.open({:spawn_executable, exe}, [
      {:packet, 4},
      :binary,
      :nouse_stdio,
      args: prefix ++ ["-m", "bridge.echo"],
      cd: Python.project_root()
    ])
  end

  @echo_frame :erlang.term_to_binary({:C, 1, :"bridge.api", :ping, [@obs]}, minor_version: 1)

  defp bare_echo(port) do
    Port.command(port, @echo_frame)

    receive do
      {^port, {:data, _}} -> :ok
    after
      30_000 -> Mix.raise("mix dqn.bench: the echo child did not answer")
    end
  end

  defp in_process_act({exe, prefix}, n, seed) do
    args = prefix ++ ["-c", @act_script, "#{n}", "#{seed}"]

    case System.cmd(exe, args, cd: Python.project_root()) do
      {out, 0} ->
        [act, values] =
          for line <- String.split(out, "\n", trim: true),
              do: line |> String.split() |> Enum.map(&String.to_float/1)

        {act, values}

      {out, status} ->
        Mix.raise("timing act in Python failed (exit #{status}): #{out}")
    end
  end

  defp stats(samples) do
    sorted = Enum.sort(samples)
    n = length(sorted)

    %{
      "median_us" => Float.round(median(sorted), 2),
      "p99_us" => Float.round(Enum.at(sorted, min(n - 1, trunc(0.99 * n))), 2),
      "n" => n
    }
  end

  # The three loops take turns, round after round; the medians are compared.
  defp training(opts, python, info) do
    runs = [
      {"python_in_process", fn -> python_training(opts, python) end},
      {"elixir_1_env", fn -> elixir_training(opts, python, 1) end},
      {"elixir_#{opts[:envs]}_envs", fn -> elixir_training(opts, python, opts[:envs]) end}
    ]

    rounds =
      for round <- 1..opts[:rounds] do
        info.(
          "training round #{round}/#{opts[:rounds]}: python -m bridge train, Elixir loop " <>
            "with 1 env, with #{opts[:envs]} envs..."
        )

        Map.new(runs, fn {name, run} -> {name, run.()} end)
      end

    median_of = fn name, key ->
      case rounds |> Enum.map(& &1[name][key]) |> Enum.reject(&is_nil/1) do
        [] -> nil
        values -> values |> median() |> Float.round(1)
      end
    end

    names = Enum.map(runs, &elem(&1, 0))

    %{
      rounds: Enum.map(rounds, fn round -> Map.new(round, fn {name, r} -> {name, r.sps} end) end),
      median: Map.new(names, &{&1, median_of.(&1, :sps)}),
      cpu_rounds:
        Enum.map(rounds, fn round ->
          Map.new(round, fn {name, r} ->
            {name, %{"python" => r.python_cpu, "beam" => r.beam_cpu}}
          end)
        end),
      cpu_median:
        Map.new(
          names,
          &{&1, %{"python" => median_of.(&1, :python_cpu), "beam" => median_of.(&1, :beam_cpu)}}
        )
    }
  end

  defp median(values) do
    sorted = Enum.sort(values)
    n = length(sorted)
    mid = div(n, 2)

    if rem(n, 2) == 1,
      do: Enum.at(sorted, mid),
      else: (Enum.at(sorted, mid - 1) + Enum.at(sorted, mid)) / 2
  end

  # As `mix dqn.train` runs it: with a CPU kept for Python's main thread (see
  # `Mix.Tasks.Dqn.TaskSupport.with_python_cpu/2`).
  defp elixir_training(opts, python, n_envs) do
    Support.with_python_cpu(true, fn server_args ->
      elixir_training(opts, python, n_envs, server_args)
    end)
  end

  defp elixir_training(opts, python, n_envs, server_args) do
    {:ok, py} = Python.start_link(Support.server_opts(python, server_args))
    {:ok, _} = Python.call(py, :ping, [:warm])

    try do
      # Like `python -m bridge train`'s steps/s: the clock starts once the agent (and its
      # compiled train step) exists.
      {:ok, agent} = Agent.start_link(python: py, config: [seed: opts[:seed]])
      os_pid = Python.os_pid(py)
      cpu0 = {cpu_ticks(os_pid), cpu_ticks(System.pid())}
      t0 = System.monotonic_time()
      env = if n_envs == 1, do: CartPole.new(), else: Vector.new(CartPole.new(), n_envs)
      state = agent |> Loop.dqn(env) |> Loop.run(steps: opts[:steps], seed: opts[:seed])

      seconds =
        System.convert_time_unit(System.monotonic_time() - t0, :native, :microsecond) / 1.0e6

      {python_cpu, beam_cpu} = cpu0
      per_step = &us_per_step(&1, &2, state.step, opts[:clock_ticks])

      result = %{
        sps: Float.round(state.step / seconds, 1),
        python_cpu: per_step.(python_cpu, cpu_ticks(os_pid)),
        beam_cpu: per_step.(beam_cpu, cpu_ticks(System.pid()))
      }

      Agent.stop(agent)
      result
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
        {_, 0} -> read_summary(Path.join([runs_dir, "python", "summary.json"]))
        {out, status} -> Mix.raise("python -m bridge train failed (exit #{status}):\n#{out}")
      end
    after
      File.rm_rf(runs_dir)
    end
  end

  defp read_summary(summary) do
    number = fn text, key ->
      case Regex.run(~r/"#{key}":\s*([0-9.eE+-]+)/, text) do
        [_, value] -> value |> Float.parse() |> elem(0) |> Float.round(1)
        nil -> nil
      end
    end

    with {:ok, text} <- File.read(summary),
         sps when sps != nil <- number.(text, "steps_per_second") do
      %{sps: sps, python_cpu: number.(text, "cpu_us_per_step"), beam_cpu: nil}
    else
      _ -> Mix.raise("#{summary} has no \"steps_per_second\"")
    end
  end

  # CPU time used so far by OS process `os_pid`, all its threads, in clock ticks (Linux's
  # /proc); nil where there is no /proc.
  defp cpu_ticks(os_pid) do
    with {:ok, stat} <- File.read("/proc/#{os_pid}/stat") do
      # Fields after the command name (which may hold spaces): utime and stime are the
      # 12th and 13th.
      fields = stat |> String.split(")") |> List.last() |> String.split()
      String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))
    else
      _ -> nil
    end
  end

  defp clock_ticks do
    with exe when exe != nil <- System.find_executable("getconf"),
         {out, 0} <- System.cmd(exe, ["CLK_TCK"]),
         {ticks, _} when ticks > 0 <- Integer.parse(out) do
      ticks
    else
      _ -> 100
    end
  end

  defp us_per_step(before, after_, steps, ticks_per_second)
       when is_number(before) and is_number(after_),
       do: Float.round((after_ - before) / ticks_per_second / steps * 1.0e6, 1)

  defp us_per_step(_, _, _, _), do: nil

  # The training targets: Elixir-driven steps/s over `python -m bridge train`'s.
  @one_env_target 1.0
  @vector_target 3.0
  @one_env_key "elixir 1 env / python in process (target >= #{@one_env_target})"
  @vector_key "elixir vectorised / python in process (target >= #{@vector_target})"

  defp ratios(latency, sps, n_envs) do
    med = &latency[&1]["median_us"]
    p99 = &latency[&1]["p99_us"]
    act_med = min(med.("in_process_act"), med.("in_process_act_values"))
    act_p99 = min(p99.("in_process_act"), p99.("in_process_act_values"))
    python = sps["python_in_process"]

    %{
      "select_action / (port_echo + act), median (target <= 1.25)" =>
        Float.round(med.("select_action") / (med.("port_echo") + act_med), 3),
      "select_action / (port_echo + act), p99" =>
        Float.round(p99.("select_action") / (p99.("port_echo") + act_p99), 3),
      "select_action / (bare_port_echo + act), median" =>
        Float.round(med.("select_action") / (med.("bare_port_echo") + act_med), 3),
      "select_action / (ping + act), median" =>
        Float.round(med.("select_action") / (med.("ping") + act_med), 3),
      @one_env_key => Float.round(sps["elixir_1_env"] / python, 3),
      @vector_key => Float.round(sps["elixir_#{n_envs}_envs"] / python, 3)
    }
  end

  # Each Elixir loop against the Python run of its own round: the machine's drift
  # between rounds moves both sides of a pair alike, so the spread of these ratios
  # says how sure the median ratio is.
  defp paired_ratios(rounds, n_envs) do
    for {name, target} <- [
          {"elixir_1_env", @one_env_target},
          {"elixir_#{n_envs}_envs", @vector_target}
        ],
        into: %{} do
      ratios = Enum.map(rounds, &Float.round(&1[name] / &1["python_in_process"], 3))

      {name,
       %{
         "by_round" => ratios,
         "min" => Enum.min(ratios),
         "median" => Float.round(median(ratios), 3),
         "max" => Enum.max(ratios),
         "target" => target,
         "rounds_meeting_target" => Enum.count(ratios, &(&1 >= target))
       }}
    end
  end

  defp paired_line(result, n_envs) do
    pairs = result.training_ratios_by_round

    cell = fn name, label ->
      %{"min" => lo, "median" => mid, "max" => hi, "target" => target} = pair = pairs[name]

      "#{label} #{lo}-#{hi}, median #{mid}, #{pair["rounds_meeting_target"]} of " <>
        "#{result.rounds} rounds >= #{target}"
    end

    "Ratios paired by round (each Elixir loop against the Python run of its round): " <>
      cell.("elixir_1_env", "1 env") <>
      "; " <> cell.("elixir_#{n_envs}_envs", "#{n_envs} envs") <> "."
  end

  defp table(result, n_envs) do
    rt = result.round_trips_us
    sps = result.training_steps_per_second
    r = result.ratios
    row = fn name -> "| #{name} | #{rt[name]["median_us"]} | #{rt[name]["p99_us"]} |" end
    pinned = if cpu = result.round_trips_pinned_to_cpu, do: ", pinned to CPU #{cpu}", else: ""

    cpu_cells = fn name ->
      cpu = result.training_cpu_us_per_step[name]
      wall = Float.round(1.0e6 / sps[name], 1)
      "#{wall} | #{cpu["python"] || "-"} | #{cpu["beam"] || "-"}"
    end

    """

    | round trip (µs#{pinned}) | median | p99 |
    |---|---:|---:|
    #{row.("port_echo")}
    #{row.("bare_port_echo")}
    #{row.("ping")}
    #{row.("select_action")}
    #{row.("in_process_act")}
    #{row.("in_process_act_values")}

    select_action / (port echo + act): #{r["select_action / (port_echo + act), median (target <= 1.25)"]} (median, target <= 1.25), #{r["select_action / (port_echo + act), p99"]} (p99); against the bare port echo: #{r["select_action / (bare_port_echo + act), median"]}; against ping: #{r["select_action / (ping + act), median"]}

    | training, CartPole-v1, #{result.steps} steps, median of #{result.rounds} | steps/s | vs Python | wall µs/step | CPU µs/step: Python | BEAM |
    |---|---:|---:|---:|---:|---:|
    | `python -m bridge train` (in process, gymnasium) | #{sps["python_in_process"]} | 1.00 | #{cpu_cells.("python_in_process")} |
    | `Loop`, 1 Elixir CartPole | #{sps["elixir_1_env"]} | #{r[@one_env_key]} | #{cpu_cells.("elixir_1_env")} |
    | `Loop`, #{n_envs} vectorised Elixir CartPoles | #{sps["elixir_#{n_envs}_envs"]} | #{r[@vector_key]} | #{cpu_cells.("elixir_#{n_envs}_envs")} |

    #{paired_line(result, n_envs)}

    CPU is of all threads, per env step. #{result.cpus_available} CPUs are available: a loop whose CPU per step nears #{result.cpus_available} x its wall time per step is bound by the CPUs, not by waiting.
    """
  end
end
