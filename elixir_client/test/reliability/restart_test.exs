defmodule DQNBridge.Reliability.RestartTest do
  # An agent with `restart:` and `autosave:` outlives its Python process: SIGKILLs
  # during training, a SIGKILL in the middle of a save, too many restarts.
  use ExUnit.Case, async: true

  import DQNBridge.PythonCase, only: [quick_config: 1]

  alias DQNBridge.{Agent, Loop, OSProcess}
  alias DQNBridge.Env.CartPole

  @moduletag :integration
  @moduletag :reliability
  @moduletag :tmp_dir
  @moduletag timeout: 600_000

  @kills 20
  @kill_every 100

  test "20 SIGKILLs of Python during a CartPole run: 20 restarts, the run completes, its checkpoint loads",
       %{tmp_dir: dir} do
    autosave = Path.join(dir, "autosave.ckpt")

    {:ok, agent} =
      Agent.start_link(
        config: quick_config(hidden_sizes: [16, 16]),
        python: [env: jax_cache(dir)],
        restart: [max_restarts: @kills, max_seconds: 1],
        autosave: [path: autosave, every: 50]
      )

    # Every 100 env steps, a SIGKILL lands 0-5 ms later: between calls or in the middle of one.
    kill_soon = fn state ->
      killed = Process.get(:killed, [])
      os_pid = next_victim(state.agent, killed, System.monotonic_time(:millisecond) + 30_000)

      spawn(fn ->
        Process.sleep(:rand.uniform(6) - 1)
        OSProcess.kill9(os_pid)
      end)

      Process.put(:killed, [OSProcess.track(os_pid) | killed])
      {:continue, state}
    end

    steps = (@kills + 1) * @kill_every

    state =
      Loop.dqn(agent, CartPole.new())
      |> Loop.handle_event(
        :step_completed,
        kill_soon,
        &(rem(&1.step, @kill_every) == 0 and &1.step <= @kills * @kill_every)
      )
      |> Loop.run(steps: steps, seed: 0)

    killed = Process.get(:killed)
    assert state.status == :completed and state.step == steps
    assert length(Enum.uniq(killed)) == @kills
    assert Enum.all?(killed, &(OSProcess.wait_gone(&1, 2_000) != :timeout))

    health = await_restarts(agent, @kills, 30_000)

    assert %{
             restarts: @kills,
             last_exit: {:shutdown, {:python_exited, _}},
             checkpoint: ^autosave
           } = health

    refute health.os_pid in killed

    # Each restart loses at most the 50 steps since the last autosave, plus the call in flight.
    %{env_steps: env_steps} = Agent.info(agent)
    assert env_steps <= steps and env_steps >= steps - @kills * 51

    final = Path.join(dir, "final.ckpt")
    assert Agent.save(agent, final) == :ok
    :ok = Agent.stop(agent)
    {:ok, loaded} = Agent.start_link(load: final)
    assert %{env_steps: ^env_steps} = Agent.info(loaded)
    :ok = Agent.stop(loaded)
  end

  test "a SIGKILL in the middle of a save leaves the previous checkpoint, and the agent restarts from it",
       %{tmp_dir: dir} do
    path = Path.join(dir, "agent.ckpt")

    {:ok, agent} =
      Agent.start_link(
        config: quick_config(buffer_size: 1_000_000),
        python: [env: jax_cache(dir)],
        restart: true
      )

    fill(agent, 200_000)
    assert Agent.save(agent, path) == :ok
    assert %{env_steps: 200_000} = Agent.info(agent)

    # Until a kill is seen to land between the temporary file's creation and the rename.
    {confirmed, saved} =
      Enum.reduce_while(1..5, {false, 200_000}, fn attempt, {false, saved} ->
        fill(agent, 100_000)
        %{os_pid: os_pid} = Agent.health(agent)
        OSProcess.track(os_pid)
        leftovers = temp_files(dir)
        save = Task.async(fn -> Agent.save(agent, path, 120_000) end)
        temp = wait_for_temp_file(dir, leftovers, 10_000)
        {_, 0} = System.cmd("kill", ["-STOP", "#{os_pid}"])
        mid_save? = temp != nil and File.exists?(temp)
        OSProcess.kill9(os_pid)

        # The interrupted save is sent again once the agent is back; it saves the reloaded state.
        # A save that ended before the kill returns before the agent has seen the exit.
        assert Task.await(save, 120_000) == :ok
        assert %{restarts: ^attempt, checkpoint: ^path} = await_restarts(agent, attempt, 30_000)
        %{env_steps: now} = Agent.info(agent)

        if mid_save? do
          assert now == saved, "restarted from the previous checkpoint"
          {:halt, {true, now}}
        else
          assert now in [saved, saved + 100_000]
          {:cont, {false, now}}
        end
      end)

    assert confirmed, "no kill landed in the middle of a save in 5 attempts"
    %{replay_size: replay_size} = Agent.info(agent)
    :ok = Agent.stop(agent)
    {:ok, loaded} = Agent.start_link(load: path)
    assert %{env_steps: ^saved, replay_size: ^replay_size} = Agent.info(loaded)
    :ok = Agent.stop(loaded)
  end

  test "an agent resumes from its autosave file, and saves it once more when it stops", %{
    tmp_dir: dir
  } do
    path = Path.join(dir, "autosave.ckpt")
    {:ok, agent} = Agent.start_link(config: quick_config([]), autosave: [path: path, every: 10])

    for _ <- 1..25, do: Agent.step(agent, [0.0, 0.1, 0.0, 0.1], 1.0, false, false)
    assert %{checkpoint: ^path} = Agent.health(agent)
    :ok = Agent.stop(agent)

    {:ok, resumed} =
      Agent.start_link(config: quick_config(seed: 99), autosave: [path: path, every: 10])

    assert %{env_steps: 24, config: %{seed: 0}} = Agent.info(resumed)
    :ok = Agent.stop(resumed)
  end

  test "too many restarts stop the agent with :restart_failed" do
    Process.flag(:trap_exit, true)

    {:ok, agent} =
      Agent.start_link(config: quick_config([]), restart: [max_restarts: 0, max_seconds: 60])

    %{os_pid: os_pid} = Agent.health(agent)
    OSProcess.kill9(os_pid)

    assert_receive {:EXIT, ^agent,
                    {:restart_failed,
                     {:too_many_restarts, 0, 60_000, {:shutdown, {:python_exited, _}}}}},
                   10_000
  end

  test "restart: and autosave: options are checked" do
    assert_raise ArgumentError, ~r/restart: needs an agent that owns its Python process/, fn ->
      Agent.start_link(python: self(), restart: true)
    end

    assert_raise ArgumentError, ~r/restart: must be true, false/, fn ->
      Agent.start_link(restart: :yes)
    end

    assert_raise ArgumentError, ~r/max_restarts/, fn ->
      Agent.start_link(restart: [max_restarts: -1])
    end

    assert_raise ArgumentError, ~r/autosave: needs \[path/, fn ->
      Agent.start_link(autosave: [path: "x"])
    end

    assert_raise ArgumentError, ~r/autosave: needs \[path/, fn ->
      Agent.start_link(autosave: [path: "x", every: 0])
    end

    assert_raise ArgumentError, ~r/unknown keys \[:evry\]/, fn ->
      Agent.start_link(autosave: [path: "x", evry: 5])
    end
  end

  # A restart compiles the agent's jitted functions again; JAX's persistent
  # compilation cache takes that from ~4 s to well under 1 s.
  defp jax_cache(dir) do
    [
      {"JAX_COMPILATION_CACHE_DIR", Path.join(dir, "jax_cache")},
      {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"}
    ]
  end

  # The agent's current Python process, once the one killed last is dead and replaced.
  defp next_victim(agent, killed, deadline) do
    os_pid = Agent.health(agent).os_pid

    cond do
      os_pid != nil and os_pid not in killed and Enum.all?(killed, &(not OSProcess.alive?(&1))) ->
        os_pid

      System.monotonic_time(:millisecond) > deadline ->
        flunk("no new Python process 30 s after kill #{length(killed)}")

      true ->
        Process.sleep(5)
        next_victim(agent, killed, deadline)
    end
  end

  # The agent's health once it has restarted its Python process `n` times in all.
  defp await_restarts(agent, n, ms) do
    deadline = System.monotonic_time(:millisecond) + ms

    Stream.repeatedly(fn ->
      health = Agent.health(agent)

      cond do
        health.restarts >= n and health.os_pid != nil -> health
        System.monotonic_time(:millisecond) > deadline -> health
        true -> Process.sleep(5)
      end
    end)
    |> Enum.find(&is_map/1)
  end

  # `n` transitions, stored as tensors in batches of 50,000.
  defp fill(agent, n) do
    for rows <- Stream.duplicate(50_000, div(n, 50_000)) do
      obs = {:tensor, :f32, {rows, 4}, :binary.copy(<<0.25::float-32-little>>, rows * 4)}
      actions = {:tensor, :s64, {rows}, :binary.copy(<<1::signed-64-little>>, rows)}
      rewards = {:tensor, :f64, {rows}, :binary.copy(<<1.0::float-64-little>>, rows)}
      falses = List.duplicate(false, rows)

      assert :ok =
               Agent.observe(
                 agent,
                 %{
                   obs: obs,
                   action: actions,
                   reward: rewards,
                   next_obs: obs,
                   terminated: falses,
                   truncated: falses
                 },
                 60_000
               )
    end
  end

  # Earlier kills in the middle of a save leave their temporary files behind.
  defp temp_files(dir), do: dir |> File.ls!() |> Enum.filter(&String.starts_with?(&1, ".ckpt-"))

  defp wait_for_temp_file(dir, leftovers, ms) do
    deadline = System.monotonic_time(:millisecond) + ms

    Stream.repeatedly(fn ->
      case temp_files(dir) -- leftovers do
        [] -> if System.monotonic_time(:millisecond) > deadline, do: :timeout, else: nil
        [name | _] -> Path.join(dir, name)
      end
    end)
    |> Enum.find(& &1)
    |> case do
      :timeout -> nil
      temp -> temp
    end
  end
end
