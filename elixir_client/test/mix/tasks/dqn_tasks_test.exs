defmodule Mix.Tasks.DqnTasksTest do
  # Not async: dqn.bench's test compares each loop's CPU time with its wall time, which
  # only means something on a machine the other test modules (the reliability tests'
  # kill storms, their training runs) are not loading at the same moment; and Mix's
  # shell, set below, is global.
  use ExUnit.Case, async: false

  alias Mix.Tasks.Dqn.TaskSupport, as: Support

  @moduletag :integration
  @moduletag timeout: 300_000

  setup do
    Mix.shell(Mix.Shell.Process)
    on_exit(fn -> Mix.shell(Mix.Shell.IO) end)
  end

  defp messages do
    receive do
      {:mix_shell, :info, [text]} -> [text | messages()]
    after
      0 -> []
    end
  end

  @tag :tmp_dir
  test "dqn.train --steps 20000 --seed 0 reaches a greedy mean >= 475 and writes the results",
       %{tmp_dir: dir} do
    summary =
      Mix.Tasks.Dqn.Train.run(
        ~w(--steps 20000 --seed 0 --name cartpole --no-progress --runs-dir) ++ [dir]
      )

    run = Path.join(dir, "cartpole")
    assert summary.best_eval >= 475.0, "best greedy mean #{summary.best_eval}"

    for file <- ~w(metrics.csv best.ckpt final.ckpt config.json summary.json learning_curve.png) do
      assert File.regular?(Path.join(run, file)), "#{file} missing"
    end

    [header | rows] =
      run |> Path.join("metrics.csv") |> File.read!() |> String.split("\n", trim: true)

    assert header ==
             "step,episode,episode_return,episode_length,epsilon,loss,eval_return,steps_per_second"

    evals =
      for [step, _, "", "", _, _, eval, _] <- Enum.map(rows, &String.split(&1, ",")),
          do: {step, eval}

    assert length(evals) == 20
    assert <<0x89, "PNG", _::binary>> = File.read!(Path.join(run, "learning_curve.png"))
    printed = messages()
    assert Enum.any?(printed, &(&1 =~ "results in #{run}/"))

    # On Linux with two CPUs or more, one was kept for Python's main thread, and it said so.
    cpus = beam_thread_cpus() |> Enum.concat() |> Enum.uniq()

    if length(cpus) > 1 and System.find_executable("taskset") do
      assert Enum.any?(printed, &(&1 =~ ~r/CPU \d+ is kept for Python's main thread/))
    end

    # dqn.eval reads the run's best checkpoint
    eval = Mix.Tasks.Dqn.Eval.run(~w(--name cartpole --episodes 10 --runs-dir) ++ [dir])
    assert eval.mean >= 400.0

    assert Enum.any?(
             messages(),
             &(&1 =~ ~r/CartPole-v1: mean return [\d.]+ ± [\d.]+ over 10 greedy episodes/)
           )
  end

  @tag :tmp_dir
  test "dqn.train with vectorised envs and --set, dqn.eval --json", %{tmp_dir: dir} do
    summary =
      Mix.Tasks.Dqn.Train.run(
        ~w(--steps 400 --envs 4 --eval-every 200 --eval-episodes 2 --no-progress --no-cpu-split) ++
          ~w(--name vec) ++
          ~w(--set learning_starts=100 --set hidden_sizes=[16,16] --set loss=mse --runs-dir) ++
          [dir]
      )

    assert %{steps: 400, n_envs: 4, status: "completed"} = summary
    config = File.read!(Path.join([dir, "vec", "config.json"]))
    assert config =~ ~s("hidden_sizes": [16, 16])
    assert config =~ ~s("loss": "mse")

    Mix.Tasks.Dqn.Eval.run([
      "--checkpoint",
      Path.join([dir, "vec", "final.ckpt"]),
      "--episodes",
      "2",
      "--json"
    ])

    assert [json] = Enum.filter(messages(), &String.starts_with?(&1, "{"))
    assert json =~ ~s("episodes": 2)
  end

  test "bad options raise with a helpful message" do
    train = &Mix.Tasks.Dqn.Train.run/1

    assert_raise Mix.Error, ~r/unknown option --stpes \(did you mean --steps\?\)/, fn ->
      train.(~w(--stpes 10))
    end

    assert_raise Mix.Error, ~r/--steps expects an integer, got "many"/, fn ->
      train.(~w(--steps many))
    end

    assert_raise Mix.Error, ~r/--steps must be a positive integer, got -5/, fn ->
      train.(~w(--steps -5))
    end

    assert_raise Mix.Error, ~r/--envs must be a positive integer, got 0/, fn ->
      train.(~w(--envs 0))
    end

    assert_raise Mix.Error, ~r/unexpected argument "extra"/, fn -> train.(~w(extra)) end
    assert_raise Mix.Error, ~r/--set expects KEY=VALUE/, fn -> train.(~w(--set lr)) end

    assert_raise Mix.Error, ~r/--python \/nope: no such file/, fn ->
      train.(~w(--python /nope))
    end

    assert_raise Mix.Error, ~r/unknown config key 'lrr'; allowed keys: /, fn ->
      train.(~w(--set lrr=0.1 --steps 10 --no-progress --runs-dir) ++ [System.tmp_dir!()])
    end

    assert_raise Mix.Error, ~r/give --checkpoint PATH or --name NAME/, fn ->
      Mix.Tasks.Dqn.Eval.run([])
    end

    assert_raise Mix.Error, ~r/no checkpoint at runs\/none\/best.ckpt/, fn ->
      Mix.Tasks.Dqn.Eval.run(~w(--name none))
    end

    assert_raise Mix.Error, ~r/--episodes must be a positive integer/, fn ->
      Mix.Tasks.Dqn.Eval.run(~w(--name x --episodes 0))
    end

    assert_raise Mix.Error, ~r/unknown option --fast/, fn ->
      Mix.Tasks.Dqn.Bench.run(~w(--fast))
    end

    assert_raise Mix.Error, ~r/--calls expects an integer/, fn ->
      Mix.Tasks.Dqn.Bench.run(~w(--calls lots))
    end
  end

  @tag :tmp_dir
  test "dqn.bench measures round trips and training side by side and writes its JSON",
       %{tmp_dir: dir} do
    result =
      Mix.Tasks.Dqn.Bench.run(~w(--calls 100 --steps 800 --rounds 2 --envs 2 --out) ++ [dir])

    [path] = Path.wildcard(Path.join(dir, "elixir-*.json"))
    json = File.read!(path)

    for kind <-
          ~w(port_echo bare_port_echo ping select_action in_process_act in_process_act_values) do
      %{"median_us" => median, "p99_us" => p99, "n" => 100} = result.round_trips_us[kind]
      assert 0 < median and median <= p99, "#{kind}: #{median} / #{p99}"
      assert json =~ ~s("#{kind}")
    end

    assert [round, _] = result.training_steps_per_second_by_round
    assert Map.keys(round) == ~w(elixir_1_env elixir_2_envs python_in_process)

    for {name, sps} <- result.training_steps_per_second,
        do: assert(sps > 0 and sps == Float.round(median_of(result, name), 1))

    # CPU per env step of all threads, read from /proc: Python's in every loop (its main
    # thread alone runs for most of the wall time), the BEAM's where it drives the loop.
    for {name, %{"python" => python, "beam" => beam}} <- result.training_cpu_us_per_step do
      wall = 1.0e6 / result.training_steps_per_second[name]
      assert python > 0.3 * wall and python < 1.0e6, "#{name}: #{python} µs of CPU, #{wall} wall"
      if name == "python_in_process", do: assert(beam == nil), else: assert(beam >= 0)
    end

    assert result.cpus_available >= 1 and json =~ ~s("training_cpu_us_per_step")

    # Each loop's ratio to the Python run of the same round, and how many rounds meet its target.
    for {name, target} <- [{"elixir_1_env", 1.0}, {"elixir_2_envs", 3.0}] do
      pairs = result.training_ratios_by_round[name]

      expected =
        for round <- result.training_steps_per_second_by_round,
            do: Float.round(round[name] / round["python_in_process"], 3)

      assert pairs["by_round"] == expected
      assert pairs["min"] == Enum.min(expected) and pairs["max"] == Enum.max(expected)
      assert pairs["median"] == Float.round(Enum.sum(expected) / 2, 3)
      assert pairs["rounds_meeting_target"] == Enum.count(expected, &(&1 >= target))
    end

    assert json =~ ~s("training_ratios_by_round")
    ratio = result.ratios["select_action / (port_echo + act), median (target <= 1.25)"]
    assert is_float(ratio) and ratio > 0
    printed = messages()
    assert Enum.any?(printed, &(&1 =~ "| `Loop`, 2 vectorised Elixir CartPoles |"))
    assert Enum.any?(printed, &(&1 =~ "CPU µs/step: Python | BEAM"))

    assert Enum.any?(
             printed,
             &(&1 =~
                 ~r/Ratios paired by round .*: 1 env [\d.]+-[\d.]+, median [\d.]+, \d of 2 rounds >= 1.0; 2 envs /)
           )
  end

  defp median_of(result, name) do
    [a, b] = Enum.map(result.training_steps_per_second_by_round, & &1[name])
    (a + b) / 2
  end

  test "with_python_cpu keeps the last CPU for Python's main thread, then gives the BEAM its CPUs back" do
    before = beam_thread_cpus()
    cpus = before |> Enum.concat() |> Enum.uniq() |> Enum.sort()
    {args, during} = Support.with_python_cpu(true, fn args -> {args, beam_thread_cpus()} end)
    assert beam_thread_cpus() == before

    if length(cpus) > 1 and System.find_executable("taskset") do
      python_cpu = List.last(cpus)
      assert args == ~w(-m bridge serve --main-cpu #{python_cpu})
      assert Enum.all?(during, &(Enum.sort(&1) == cpus -- [python_cpu]))
    else
      assert args == ~w(-m bridge serve)
    end

    assert Support.parse_cpu_list("0-2,5") == [0, 1, 2, 5]
  end

  # The CPUs each thread of this BEAM may run on.
  defp beam_thread_cpus do
    for task <- File.ls!("/proc/#{System.pid()}/task"),
        {:ok, status} <- [File.read("/proc/#{System.pid()}/task/#{task}/status")] do
      [_, list] = Regex.run(~r/Cpus_allowed_list:\s*(\S+)/, status)
      Support.parse_cpu_list(list)
    end
  end

  test "dqn.bench refuses a bad --cpu and --rounds" do
    assert_raise Mix.Error, ~r/--cpu must be a CPU number \(0 or more\), got -1/, fn ->
      Mix.Tasks.Dqn.Bench.run(~w(--cpu -1))
    end

    assert_raise Mix.Error, ~r/--rounds must be a positive integer, got 0/, fn ->
      Mix.Tasks.Dqn.Bench.run(~w(--rounds 0))
    end
  end

  test "every task has a shortdoc and documents its options" do
    for task <- [Mix.Tasks.Dqn.Train, Mix.Tasks.Dqn.Eval, Mix.Tasks.Dqn.Bench] do
      assert Mix.Task.shortdoc(task)
      {:docs_v1, _, _, _, %{"en" => doc}, _, _} = Code.fetch_docs(task)
      assert doc =~ "## Command line options"
    end
  end
end
