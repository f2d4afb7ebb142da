defmodule DQNBridge.AgentTest do
  use ExUnit.Case, async: true

  import DQNBridge.PythonCase

  alias DQNBridge.{Agent, Env, Python, PythonError}
  alias DQNBridge.Env.CartPole

  @moduletag :integration
  @moduletag timeout: 120_000

  @obs [0.01, -0.02, 0.03, 0.04]

  setup_all do
    %{py: start_supervised!(Python)}
  end

  setup %{py: py} do
    %{agent: start_supervised!({Agent, python: py, config: quick_config()})}
  end

  test "config is a keyword list or a map, checked by Python's DQNConfig", %{py: py} do
    {:ok, a} = Agent.start_link(python: py, config: %{lr: 5.0e-4, hidden_sizes: [8, 8], seed: 3})

    assert %{config: %{lr: 5.0e-4, hidden_sizes: [8, 8], seed: 3, env_id: "CartPole-v1"}} =
             Agent.info(a)

    assert {:error, %PythonError{class: "builtins.ValueError", message: message}} =
             Agent.start(python: py, config: [bogus_key: 1])

    assert message =~ "unknown config key 'bogus_key'"

    assert {:error, %PythonError{message: message}} =
             Agent.start(python: py, config: [gamma: 1.5])

    assert message =~ "gamma"
  end

  test "info/1 gives counters and the config with atom keys", %{agent: agent} do
    info = Agent.info(agent)

    assert %{env_steps: 0, updates: 0, episodes: 0, epsilon: 1.0, replay_size: 0} = info
    assert %{obs_dim: 4, n_actions: 2, loss: nil, q_mean: nil} = info
    assert info.config.batch_size == 16
  end

  test "select_action/3 for one observation, a batch, greedy or not", %{agent: agent} do
    assert Agent.select_action(agent, @obs) in [0, 1]
    assert [a, b, c] = Agent.select_action(agent, [@obs, @obs, @obs])
    assert Enum.all?([a, b, c], &(&1 in [0, 1]))
    greedy = Agent.select_action(agent, @obs, greedy: true)

    assert for(_ <- 1..5, do: Agent.select_action(agent, @obs, greedy: true)) ==
             List.duplicate(greedy, 5)
  end

  test "a bad observation comes back as a PythonError naming the problem", %{agent: agent} do
    assert {:error, %PythonError{class: "builtins.ValueError", message: message}} =
             Agent.select_action(agent, [1.0, 2.0])

    assert message =~ "obs has shape [2]"
  end

  test "observe/2 stores transitions and optimize/1 trains once enough are stored", %{
    agent: agent
  } do
    assert Agent.optimize(agent) == :skipped

    transition = %{
      obs: @obs,
      action: 1,
      reward: 1.0,
      next_obs: @obs,
      terminated: false,
      truncated: false
    }

    for _ <- 1..31, do: assert(Agent.observe(agent, transition) == :ok)
    assert Agent.optimize(agent) == :skipped

    batch = %{
      transition
      | obs: [@obs, @obs],
        action: [0, 1],
        reward: [1.0, 0.0],
        next_obs: [@obs, @obs],
        terminated: [false, true],
        truncated: [false, false]
    }

    assert Agent.observe(agent, batch) == :ok

    assert %{loss: loss, q_mean: q_mean, updates: 1} = Agent.optimize(agent)
    assert is_float(loss) and is_float(q_mean)
    assert %{env_steps: 33, updates: 1, loss: ^loss} = Agent.info(agent)
  end

  test "step/6 stores, trains when due and acts, for one env or a batch", %{agent: agent} do
    assert Agent.step(agent, @obs, 0.0, false, false) in [0, 1]

    for _ <- 1..40 do
      assert Agent.step(agent, @obs, 1.0, false, false) in [0, 1]
    end

    assert Agent.step(agent, @obs, 1.0, true, false, final_obs: [0.2, 0.0, 0.2, 0.0]) in [0, 1]
    assert %{env_steps: 41, episodes: 1, updates: updates} = Agent.info(agent)
    assert updates > 0

    batch = [@obs, @obs]
    assert [_, _] = Agent.step(agent, batch, [0.0, 0.0], [false, false], [false, false])

    assert [_, _] =
             Agent.step(agent, batch, [1.0, 1.0], [false, true], [true, false],
               final_obs: [@obs, @obs]
             )

    # slot 0 had acted in the single-env calls, so the first batch call stores it too
    assert %{env_steps: 44} = Agent.info(agent)
  end

  test "begin_episodes/1: the next step of each slot only acts", %{agent: agent} do
    batch = [@obs, @obs]
    assert [_, _] = Agent.step(agent, batch, [0.0, 0.0], [false, false], [false, false])
    assert [_, _] = Agent.step(agent, batch, [1.0, 1.0], [false, false], [false, false])
    assert %{env_steps: 2} = Agent.info(agent)
    assert :ok = Agent.begin_episodes(agent)
    assert [_, _] = Agent.step(agent, batch, [1.0, 1.0], [false, false], [false, false])
    assert %{env_steps: 2} = Agent.info(agent)
    assert [_, _] = Agent.step(agent, batch, [1.0, 1.0], [false, false], [false, false])
    assert %{env_steps: 4} = Agent.info(agent)
  end

  @tag :tmp_dir
  test "save/2 and load/2 round-trip an agent through a checkpoint", %{
    agent: agent,
    py: py,
    tmp_dir: dir
  } do
    transition = %{
      obs: @obs,
      action: 0,
      reward: 1.0,
      next_obs: @obs,
      terminated: false,
      truncated: false
    }

    for _ <- 1..40, do: Agent.observe(agent, transition)
    Agent.optimize(agent)
    path = Path.join(dir, "nested/agent.msgpack")
    assert Agent.save(agent, path) == :ok
    assert File.exists?(path)
    saved = Agent.info(agent)

    {:ok, restored} = Agent.start_link(python: py, load: path)
    # the last loss is not part of a checkpoint
    assert Map.drop(Agent.info(restored), [:loss, :q_mean]) == Map.drop(saved, [:loss, :q_mean])

    assert Agent.select_action(restored, @obs, greedy: true) ==
             Agent.select_action(agent, @obs, greedy: true)

    {:ok, fresh} = Agent.start_link(python: py, config: quick_config())
    assert Agent.load(fresh, path) == :ok
    assert %{env_steps: 40, updates: 1} = Agent.info(fresh)

    assert {:error, %PythonError{message: message}} =
             Agent.load(fresh, Path.join(dir, "missing.msgpack"))

    assert message =~ "missing.msgpack"
    assert %{env_steps: 40} = Agent.info(fresh)
  end

  test "a timed-out call returns {:error, :timeout} and its late reply is dropped", %{
    agent: agent
  } do
    assert Agent.select_action(agent, @obs, timeout: 0) == {:error, :timeout}
    assert %{env_steps: 0} = Agent.info(agent)
    refute_receive _, 100
  end

  test "the forum-style manual loop: select_action, env step, observe, optimize", %{agent: agent} do
    {obs, env} = Env.reset(CartPole.new(), 0)

    {_obs, _env, trained} =
      Enum.reduce(1..200, {obs, env, 0}, fn _, {obs, env, trained} ->
        action = Agent.select_action(agent, obs)
        {next_obs, reward, terminated, truncated, env} = Env.step(env, action)

        :ok =
          Agent.observe(agent, %{
            obs: obs,
            action: action,
            reward: reward,
            next_obs: next_obs,
            terminated: terminated,
            truncated: truncated
          })

        trained = if match?(%{loss: _}, Agent.optimize(agent)), do: trained + 1, else: trained
        {obs, env} = if terminated or truncated, do: Env.reset(env, nil), else: {next_obs, env}
        {obs, env, trained}
      end)

    assert trained == 200 - 32 + 1
    assert %{env_steps: 200, updates: ^trained} = Agent.info(agent)
  end
end

defmodule DQNBridge.AgentProcessTest do
  # Agents that own their Python process.
  use ExUnit.Case, async: true

  import DQNBridge.PythonCase

  alias DQNBridge.{Agent, Python}

  @moduletag :integration
  @moduletag timeout: 120_000

  test "an agent owns its Python process: stopping it ends the OS process" do
    {:ok, agent} = Agent.start_link(config: quick_config())
    os_pid = Python.os_pid(Agent.python(agent))
    assert os_alive?(os_pid)

    assert Agent.stop(agent) == :ok
    refute os_alive?(os_pid)
  end

  test "when Python dies, waiting callers get {:error, {:python_exited, status}} and the agent stops" do
    {:ok, agent} = Agent.start(config: quick_config())
    py = Agent.python(agent)
    ref = Process.monitor(agent)
    System.cmd("kill", ["-KILL", "#{Python.os_pid(py)}"])

    assert {:error, {:python_exited, status}} = Agent.info(agent, 5_000)
    assert status > 0
    assert_receive {:DOWN, ^ref, :process, ^agent, {:shutdown, {:python_exited, ^status}}}, 5_000
  end
end
