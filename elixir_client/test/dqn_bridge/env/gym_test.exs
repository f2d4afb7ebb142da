defmodule DQNBridge.Env.GymTest do
  use ExUnit.Case, async: true

  alias DQNBridge.{Env, Python, PythonError}
  alias DQNBridge.Env.{CartPole, Gym, Vector}

  @moduletag :integration

  setup_all do
    %{py: start_supervised!(Python)}
  end

  test "any gymnasium id through the port, behaving like the pure-Elixir CartPole", %{py: py} do
    gym = Gym.new("CartPole-v1", python: py)
    assert %{id: "CartPole-v1", obs_dim: 4, n_actions: 2, max_episode_steps: 500} = Env.spec(gym)

    {obs, gym} = Env.reset(gym, 3)
    assert length(obs) == 4
    elixir = CartPole.new(state: obs)

    Enum.reduce(1..30, {gym, elixir}, fn i, {gym, elixir} ->
      action = rem(i, 2)
      {g_obs, 1.0, g_term, g_trunc, gym} = Env.step(gym, action)
      {e_obs, 1.0, e_term, e_trunc, elixir} = Env.step(elixir, action)
      # gymnasium returns float32 observations; its state stays float64
      assert Enum.all?(Enum.zip_with(g_obs, e_obs, &abs(&1 - &2)), &(&1 < 1.0e-5))
      assert {g_term, g_trunc} == {e_term, e_trunc}
      {gym, elixir}
    end)

    assert Env.close(gym) == :ok
  end

  test "other environments, and clear errors for unknown ids", %{py: py} do
    acrobot = Gym.new("Acrobot-v1", python: py, make_opts: %{max_episode_steps: 10})
    assert %{obs_dim: 6, n_actions: 3, max_episode_steps: 10} = Env.spec(acrobot)
    {_obs, acrobot} = Env.reset(acrobot, 0)
    {_obs, reward, false, false, _} = Env.step(acrobot, 2)
    assert reward == -1.0

    assert_raise PythonError, ~r/NoSuchEnv-v0/, fn -> Gym.new("NoSuchEnv-v0", python: py) end
  end

  test "a vector of envs resets slots with seed + i and resets ended slots itself", %{py: py} do
    vec = Vector.new(Gym.new("CartPole-v1", python: py), 2)
    {obs, vec} = Vector.reset(vec, 10)
    {one, _} = Env.reset(Gym.new("CartPole-v1", python: py), 11)
    assert Enum.at(obs, 1) == one

    {_, _, terminated, _, final, _vec} =
      Enum.reduce_while(1..100, {nil, nil, nil, nil, nil, vec}, fn _, {_, _, _, _, _, vec} ->
        {_, _, _, _, final, _} = step = Vector.step(vec, [1, 1])
        if final, do: {:halt, step}, else: {:cont, step}
      end)

    assert Enum.any?(terminated)
    assert length(final) == 2
    Vector.close(vec)
  end
end
