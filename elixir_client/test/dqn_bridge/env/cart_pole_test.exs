defmodule DQNBridge.Env.CartPoleTest do
  use ExUnit.Case, async: true

  alias DQNBridge.Env
  alias DQNBridge.Env.CartPole

  doctest CartPole

  @moduletag :integration

  # gymnasium's CartPole-v1 run by the venv's Python: the start state it drew,
  # then every (action, observation, reward, terminated, truncated).
  defp reference(seed, steps, policy) do
    script = Path.join(__DIR__, "../../support/cartpole_reference.py")
    python = DQNBridge.Python.default_executable()

    {out, 0} =
      System.cmd(python, [script, "#{seed}", "#{steps}", policy],
        cd: DQNBridge.Python.project_root()
      )

    out
    |> String.split("\n", trim: true)
    |> Enum.map(fn line ->
      case String.split(line) do
        ["reset" | state] ->
          {:reset, Enum.map(state, &float/1)}

        ["step", a, o0, o1, o2, o3, r, te, tr] ->
          {:step, String.to_integer(a), Enum.map([o0, o1, o2, o3], &float/1), float(r), te == "1",
           tr == "1"}
      end
    end)
  end

  defp float(text) do
    {value, ""} = Float.parse(text)
    value
  end

  # Replays the reference actions through the Elixir env and checks every step.
  defp replay(events) do
    Enum.reduce(events, {nil, 0}, fn
      {:reset, state}, {_env, n} ->
        {CartPole.new(state: state), n}

      {:step, action, obs, reward, terminated, truncated}, {env, n} ->
        {e_obs, e_reward, e_terminated, e_truncated, env} = Env.step(env, action)

        for {a, b} <- Enum.zip(e_obs, obs) do
          assert abs(a - b) <= 1.0e-5, "step #{n}: #{inspect(e_obs)} vs gymnasium #{inspect(obs)}"
        end

        assert {e_reward, e_terminated, e_truncated} == {reward, terminated, truncated},
               "step #{n}: reward/terminated/truncated differ"

        {env, n + 1}
    end)
  end

  test "matches gymnasium CartPole-v1 over 1,000 random steps" do
    events = reference(0, 1000, "random")
    assert {_env, 1000} = replay(events)
    assert Enum.count(events, &match?({:step, _, _, _, true, _}, &1)) > 20
  end

  test "matches gymnasium through the 500-step truncation" do
    events = reference(1, 1200, "balance")
    assert {_env, 1200} = replay(events)
    assert Enum.count(events, &match?({:step, _, _, _, false, true}, &1)) >= 2
  end

  test "reset draws start states in [-0.05, 0.05) and is reproducible by seed" do
    {obs, env} = Env.reset(CartPole.new(), 7)
    assert Enum.all?(obs, &(&1 >= -0.05 and &1 < 0.05))
    assert {^obs, _} = Env.reset(CartPole.new(), 7)
    {next, _} = Env.reset(env, nil)
    refute next == obs
  end

  test "rejects bad actions and stepping before reset" do
    assert_raise ArgumentError, ~r/reset/, fn -> Env.step(CartPole.new(), 0) end
    {_, env} = Env.reset(CartPole.new(), 0)
    assert_raise ArgumentError, ~r/action must be 0 or 1, got: 2/, fn -> Env.step(env, 2) end
  end
end
