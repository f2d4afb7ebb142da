defmodule DQNBridge.Reliability.TimeoutTest do
  # A call that times out returns {:error, :timeout}; Python still answers it later,
  # and that late reply reaches no one: not the caller's mailbox, not the next call.
  #
  # Python is stopped (SIGSTOP) while each such call waits, so the reply cannot beat
  # the timeout however the machine schedules the test; it runs on SIGCONT.
  use ExUnit.Case, async: true

  alias DQNBridge.{Agent, OSProcess, Python}

  @moduletag :integration
  @moduletag :reliability
  @moduletag timeout: 300_000

  # optimize takes a few hundred ms, so the late reply comes well after the timeout:
  # 50 gradient steps of a 256x256 network on batches of 256.
  @slow_config [
    seed: 0,
    obs_dim: 4,
    n_actions: 2,
    hidden_sizes: [256, 256],
    batch_size: 256,
    learning_starts: 256,
    buffer_size: 10_000,
    n_step: 1,
    gradient_steps: 50
  ]

  setup_all do
    %{py: start_supervised!(Python)}
  end

  test "Python.call: timeout, then the late reply is dropped", %{py: py} do
    {:ok, handle} = Python.call(py, :new_agent, [Map.new(@slow_config)], 120_000)
    {:ok, nil} = Python.call(py, :observe, [handle, transitions(300)])

    for _ <- 1..3 do
      assert stopped(Python.os_pid(py), fn -> Python.call(py, :optimize, [handle], 5) end) ==
               {:error, :timeout}

      # Python answers in order: once this returns, the optimize reply has been sent.
      assert {:ok, %{"env_steps" => 300, "updates" => updates}} = Python.call(py, :info, [handle])
      assert updates > 0
      refute_receive _, 200
    end
  end

  for restart <- [false, true] do
    test "Agent calls (restart: #{restart}): timeout, then the late reply is dropped", %{py: py} do
      opts = if unquote(restart), do: [restart: true], else: [python: py]
      {:ok, agent} = Agent.start_link([config: @slow_config] ++ opts)
      assert Agent.observe(agent, transitions(300)) == :ok
      os_pid = Agent.health(agent).os_pid

      for round <- 1..3 do
        assert stopped(os_pid, fn -> Agent.optimize(agent, 5) end) == {:error, :timeout}
        assert %{env_steps: 300, updates: updates} = Agent.info(agent)
        assert updates == round * 50
        refute_receive _, 200
      end

      # Other calls that time out: the same.
      batch = List.duplicate([0.1, 0.2, 0.3, 0.4], 20_000)

      assert stopped(os_pid, fn -> Agent.select_action(agent, batch, timeout: 1) end) ==
               {:error, :timeout}

      assert stopped(os_pid, fn ->
               Agent.step(agent, [0.1, 0.2, 0.3, 0.4], 0.0, false, false, timeout: 5)
             end) == {:error, :timeout}

      assert %{env_steps: 300} = Agent.info(agent)
      refute_receive _, 200
      :ok = Agent.stop(agent)
    end
  end

  # Runs `fun` while the Python process `os_pid` is stopped, and lets it go on after.
  defp stopped(os_pid, fun) do
    OSProcess.signal(os_pid, "STOP")

    try do
      fun.()
    after
      OSProcess.signal(os_pid, "CONT")
    end
  end

  defp transitions(n) do
    obs = for i <- 1..n, do: [i / n, 0.0, -i / n, 0.0]
    falses = List.duplicate(false, n)
    actions = for i <- 1..n, do: rem(i, 2)

    %{
      obs: obs,
      action: actions,
      reward: List.duplicate(1.0, n),
      next_obs: obs,
      terminated: falses,
      truncated: falses
    }
  end
end
