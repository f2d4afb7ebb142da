defmodule DQNBridge.Reliability.NoOrphanTest do
  # The Python process dies with its owner, even in the middle of a JIT compile or a
  # train step: a SIGKILLed BEAM (a child `elixir` started here), a killed port owner,
  # a killed agent.
  use ExUnit.Case, async: true

  alias DQNBridge.{Agent, OSProcess, Python}

  @moduletag :integration
  @moduletag :reliability
  @moduletag timeout: 600_000

  @limit_ms 2_000

  # A big network, so that the first optimize compiles for a while and each
  # optimize (100 gradient steps) takes longer than the 2 s limit.
  @busy_config [
    seed: 0,
    obs_dim: 4,
    n_actions: 2,
    hidden_sizes: [512, 512],
    batch_size: 512,
    learning_starts: 512,
    buffer_size: 10_000,
    n_step: 1,
    gradient_steps: 100
  ]

  # Run by a child BEAM: start an agent, print the OS pids, then idle, or compile
  # and train. Markers on stdout say which phase it is in.
  @child_script """
  [mode] = System.argv()
  {config, _} = Code.eval_string(System.get_env("BUSY_CONFIG"))
  config = if mode == "idle", do: [seed: 0, obs_dim: 4, n_actions: 2, hidden_sizes: [16]], else: config
  {:ok, agent} = DQNBridge.Agent.start_link(config: config)
  IO.puts("PIDS \#{System.pid()} \#{DQNBridge.Python.os_pid(DQNBridge.Agent.python(agent))}")

  if mode == "idle" do
    IO.puts("IDLE")
    Process.sleep(:infinity)
  else
    obs = for i <- 1..600, do: [i / 600, 0.0, 0.0, 0.0]
    falses = List.duplicate(false, 600)
    transition = %{obs: obs, action: List.duplicate(1, 600), reward: List.duplicate(1.0, 600),
                   next_obs: obs, terminated: falses, truncated: falses}
    :ok = DQNBridge.Agent.observe(agent, transition)
    IO.puts("COMPILING")
    DQNBridge.Agent.optimize(agent, :infinity)
    IO.puts("TRAINING")
    Stream.repeatedly(fn -> DQNBridge.Agent.optimize(agent, :infinity) end) |> Stream.run()
  end
  """

  @tag :tmp_dir
  test "SIGKILL of a BEAM running an agent: its Python process is gone within 2 s, 20/20", %{
    tmp_dir: dir
  } do
    modes = Stream.cycle([:idle, :compile, :train]) |> Enum.take(20) |> Enum.map(&{&1, dir})

    results =
      modes
      |> Task.async_stream(&kill_child_beam/1, max_concurrency: 2, timeout: 180_000, ordered: true)
      |> Enum.map(fn {:ok, result} -> result end)

    report("BEAM SIGKILL", results)

    assert Enum.count(results, &(&1.gone_ms != :timeout and &1.gone_ms <= @limit_ms)) == 20,
           inspect(results)

    # The kill landed while Python was busy: compiling (the first optimize had not returned) or training.
    assert Enum.all?(results, &(&1.mode == :idle or &1.busy?)), inspect(results)
  end

  test "killing the port owner (DQNBridge.Python) ends its Python process within 2 s: idle, compiling, training" do
    results =
      for mode <- [:idle, :compile, :train] do
        {:ok, py} = Python.start()
        os_pid = OSProcess.track(Python.os_pid(py))
        {:ok, handle} = Python.call(py, :new_agent, [Map.new(@busy_config)], 120_000)
        busy_python(mode, fn fun, args -> Python.call(py, fun, [handle | args], :infinity) end)
        Process.exit(py, :kill)
        gone_ms = OSProcess.wait_gone(os_pid, 5_000)
        %{mode: mode, gone_ms: gone_ms}
      end

    report("port owner killed", results)

    assert Enum.all?(results, &(&1.gone_ms != :timeout and &1.gone_ms <= @limit_ms)),
           inspect(results)
  end

  test "killing an agent ends its Python process within 2 s: idle, compiling, training" do
    results =
      for mode <- [:idle, :compile, :train] do
        {:ok, agent} = Agent.start(config: @busy_config)
        os_pid = OSProcess.track(Agent.health(agent).os_pid)

        busy_python(mode, fn
          :observe, [transition] -> Agent.observe(agent, transition, :infinity)
          :optimize, [] -> Agent.optimize(agent, :infinity)
        end)

        Process.exit(agent, :kill)
        gone_ms = OSProcess.wait_gone(os_pid, 5_000)
        %{mode: mode, gone_ms: gone_ms}
      end

    report("agent killed", results)

    assert Enum.all?(results, &(&1.gone_ms != :timeout and &1.gone_ms <= @limit_ms)),
           inspect(results)
  end

  # Puts Python in `mode` through `call`: for :compile and :train, a process (not
  # linked: it dies with the owner) is 300 ms into a long optimize call.
  defp busy_python(:idle, _call), do: :ok

  defp busy_python(mode, call) do
    obs = for i <- 1..600, do: [i / 600, 0.0, 0.0, 0.0]
    falses = List.duplicate(false, 600)

    transition = %{
      obs: obs,
      action: List.duplicate(1, 600),
      reward: List.duplicate(1.0, 600),
      next_obs: obs,
      terminated: falses,
      truncated: falses
    }

    call.(:observe, [transition])
    if mode == :train, do: call.(:optimize, [])
    spawn(fn -> call.(:optimize, []) end)
    Process.sleep(300)
  end

  defp kill_child_beam({mode, dir}) do
    ebin = DQNBridge.Agent |> :code.which() |> to_string() |> Path.dirname()

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 16_384},
        args: ["-pa", ebin, "-e", @child_script, to_string(mode)],
        env: [{~c"BUSY_CONFIG", to_charlist(inspect(@busy_config))} | jax_cache(mode, dir)]
      ])

    [beam, python] =
      port |> read_until("PIDS ") |> String.split() |> tl() |> Enum.map(&String.to_integer/1)

    OSProcess.track(python)

    busy? =
      case mode do
        :idle ->
          read_until(port, "IDLE")
          Process.sleep(:rand.uniform(200))
          false

        :compile ->
          read_until(port, "COMPILING")
          Process.sleep(100 + :rand.uniform(100))
          # Still compiling: the first optimize has not returned.
          not line_seen?(port, "TRAINING")

        :train ->
          read_until(port, "TRAINING")
          Process.sleep(100 + :rand.uniform(200))
          true
      end

    OSProcess.kill9(beam)
    gone_ms = OSProcess.wait_gone(python, 5_000)

    receive do: ({^port, {:exit_status, _}} -> :ok),
            after: (5_000 -> flunk("the child BEAM did not exit"))

    %{mode: mode, busy?: busy?, gone_ms: gone_ms}
  end

  defp read_until(port, marker) do
    receive do
      {^port, {:data, {:eol, line}}} ->
        if String.starts_with?(line, marker), do: line, else: read_until(port, marker)

      {^port, {:data, {:noeol, _part}}} ->
        read_until(port, marker)

      {^port, {:exit_status, status}} ->
        flunk("the child BEAM exited with status #{status} before printing #{marker}")
    after
      120_000 -> flunk("the child BEAM did not print #{marker} in 120 s")
    end
  end

  defp line_seen?(port, marker) do
    receive do
      {^port, {:data, {:eol, line}}} ->
        String.starts_with?(line, marker) or line_seen?(port, marker)

      {^port, {:data, {:noeol, _part}}} ->
        line_seen?(port, marker)
    after
      0 -> false
    end
  end

  defp report(what, results) do
    if System.get_env("DQN_BRIDGE_TEST_VERBOSE") do
      times = Enum.map(results, & &1.gone_ms)

      IO.puts(
        "\n#{what}: Python gone after #{inspect(times)} ms (#{inspect(Enum.map(results, & &1.mode))})"
      )
    end
  end

  # Children killed while training need not compile for real: JAX's persistent cache
  # saves them ~1 s each. Those killed while compiling must compile.
  defp jax_cache(:train, dir) do
    [
      {~c"JAX_COMPILATION_CACHE_DIR", to_charlist(Path.join(dir, "jax_cache"))},
      {~c"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", ~c"0"}
    ]
  end

  defp jax_cache(_mode, _dir), do: []
end
