defmodule DQNBridge.Reliability.BadInputTest do
  # Bad input from the Elixir side is refused with a PythonError that names the
  # problem, and leaves the agent exactly as it was: its checkpoint (params,
  # optimizer, replay, counters, RNG, fused-step memory) is byte-identical before
  # and after the refused call.
  use ExUnit.Case, async: true

  import DQNBridge.PythonCase, only: [quick_config: 0]

  alias DQNBridge.{Agent, Python, PythonError}

  @moduletag :integration
  @moduletag :reliability
  @moduletag :tmp_dir
  @moduletag timeout: 300_000

  @obs [0.01, -0.02, 0.03, 0.04]
  @transition %{
    obs: @obs,
    action: 1,
    reward: 1.0,
    next_obs: @obs,
    terminated: false,
    truncated: false
  }

  setup_all do
    %{py: start_supervised!(Python)}
  end

  # An agent that has stored, trained and acted, so that every part of its state is in play.
  setup %{py: py} do
    agent = start_supervised!({Agent, python: py, config: quick_config()})

    for i <- 1..60 do
      obs = [i / 60, 0.0, -i / 60, 0.01]
      assert Agent.step(agent, obs, 1.0, rem(i, 20) == 0, false) in [0, 1]
    end

    assert %{updates: updates, replay_size: size} = Agent.info(agent)
    assert updates > 0 and size > 0
    %{agent: agent}
  end

  test "NaN and infinite numbers", context do
    refused(context, [
      {fn a -> Agent.select_action(a, [:nan, 0.0, 0.0, 0.0]) end,
       ~r/obs contains a non-finite value .* at env slot 0/},
      {fn a -> Agent.select_action(a, [@obs, [0.0, :infinity, 0.0, 0.0]]) end,
       ~r/non-finite .* at env slot 1/},
      {fn a -> Agent.step(a, [0.0, 0.0, :neg_infinity, 0.0], 1.0, false, false) end,
       ~r/obs contains a non-finite/},
      {fn a -> Agent.step(a, @obs, :nan, false, false) end,
       ~r/reward contains a non-finite value/},
      {fn a -> Agent.step(a, @obs, 1.0, true, false, final_obs: [:nan, 0, 0, 0]) end,
       ~r/final_obs contains a non-finite/},
      {fn a -> Agent.observe(a, %{@transition | next_obs: [0.0, :infinity, 0.0, 0.0]}) end,
       ~r/next_obs contains a non-finite/},
      {fn a -> Agent.observe(a, %{@transition | reward: :neg_infinity}) end,
       ~r/reward contains a non-finite/},
      {fn a -> Agent.select_action(a, [10 ** 400, 0, 0, 0]) end,
       ~r/every element of obs is too large for a float/},
      {fn a -> Agent.step(a, @obs, -(10 ** 400), false, false) end,
       ~r/reward is too large for a float/}
    ])
  end

  test "wrong shapes", context do
    refused(context, [
      {fn a -> Agent.select_action(a, [1.0, 2.0]) end,
       ~r/obs has shape \[2\]; expected \[4\] or \[n_envs, 4\]/},
      {fn a -> Agent.select_action(a, []) end, ~r/obs has shape \[0\]/},
      {fn a -> Agent.select_action(a, [[@obs]]) end, ~r/obs has shape \[1, 1, 4\]/},
      {fn a -> Agent.select_action(a, [@obs, [1, 2, 3]]) end,
       ~r/obs must be a rectangular \(non-ragged\) list/},
      {fn a -> Agent.step(a, [@obs, @obs], [1.0, 1.0, 1.0], [false, false], [false, false]) end,
       ~r/reward has shape \[3\]; expected one value per env slot \(2\)/},
      {fn a ->
         Agent.step(a, [@obs, @obs], [1.0, 1.0], [true, false], [false, false], final_obs: [@obs])
       end, ~r/final_obs has 1 rows but obs has 2/},
      {fn a -> Agent.step(a, [@obs, @obs], 1.0, [false, false, false], false) end,
       ~r/terminated must be/},
      {fn a -> Agent.observe(a, %{@transition | obs: [@obs, @obs]}) end,
       ~r/next_obs has 1 rows but obs has 2/},
      {fn a -> Agent.select_action(a, {:tensor, :f32, {4}, <<1, 2, 3>>}) end,
       ~r/needs 16 data bytes, got 3/}
    ])
  end

  test "wrong types", context do
    refused(context, [
      {fn a -> Agent.select_action(a, "abcd") end,
       ~r/obs must be a number, a list of numbers or a tensor/},
      {fn a -> Agent.select_action(a, %{a: 1}) end,
       ~r/obs must be a number, a list of numbers or a tensor/},
      {fn a -> Agent.select_action(a, [:a, :b, :c, :d]) end,
       ~r/every element of obs must be a number, got :a/},
      {fn a -> Agent.select_action(a, {:tensor, :c64, {4}, <<0::128>>}) end,
       ~r/tensor dtype :c64 is not one of/},
      {fn a -> Agent.step(a, @obs, "1.0", false, false) end, ~r/reward must be a number/},
      {fn a -> Agent.step(a, @obs, 1.0, 1, false) end,
       ~r/terminated must be true or false, got 1/},
      {fn a -> Agent.step(a, @obs, 1.0, false, nil) end, ~r/truncated must be true or false/},
      {fn a -> Agent.observe(a, %{@transition | action: 1.5}) end,
       ~r/action must be an integer, got 1.5/},
      {fn a -> Agent.observe(a, %{@transition | action: :left}) end,
       ~r/action must be an integer, got :left/},
      {fn a -> Agent.observe(a, Map.delete(@transition, :reward)) end,
       ~r/transition lacks key\(s\) reward/}
    ])
  end

  test "out-of-range actions", context do
    refused(context, [
      {fn a -> Agent.observe(a, %{@transition | action: 2}) end,
       ~r/action 2 is out of range; allowed actions are 0..1/},
      {fn a -> Agent.observe(a, %{@transition | action: -1}) end, ~r/action -1 is out of range/},
      {fn a -> Agent.observe(a, %{@transition | action: 10 ** 20}) end,
       ~r/action 100000000000000000000 is out of range/},
      {fn a ->
         Agent.observe(a, %{
           @transition
           | obs: [@obs, @obs],
             next_obs: [@obs, @obs],
             action: [0, 5],
             reward: [1.0, 1.0],
             terminated: [false, false],
             truncated: [false, false]
         })
       end, ~r/action 5 is out of range/}
    ])
  end

  test "unknown options and handles", %{py: py} = context do
    handle = fn a -> :sys.get_state(a).handle end

    refused(context, [
      {fn a ->
         Python.call(py, :select_action, [handle.(a), @obs, %{bogus: true}]) |> unwrap()
       end, ~r/unknown key 'bogus' in select_action options: allowed keys are greedy/},
      {fn a -> Agent.select_action(a, @obs, greedy: "yes") end,
       ~r/option greedy must be true or false/},
      {fn a -> Agent.observe(a, Map.put(@transition, :bogus, 1)) end,
       ~r/unknown key 'bogus' in transition/},
      {fn _ -> Python.call(py, :select_action, [{"agent", 999_999}, @obs]) |> unwrap() end,
       ~r/unknown agent handle .* never issued or is closed/},
      {fn _ -> Python.call(py, :no_such_function, []) |> unwrap() end,
       ~r/not an allowed function/}
    ])

    # Options the Elixir API knows are checked before anything is sent.
    %{agent: agent, tmp_dir: dir} = context
    before = snapshot(agent, dir)

    assert_raise ArgumentError, ~r/unknown keys \[:bogus\]/, fn ->
      Agent.select_action(agent, @obs, bogus: true)
    end

    assert_raise ArgumentError, ~r/unknown keys \[:bogus\]/, fn ->
      Agent.step(agent, @obs, 1.0, false, false, bogus: 1)
    end

    assert snapshot(agent, dir) == before

    assert {:error, %PythonError{message: message}} =
             Agent.start(python: py, config: [bogus_key: 1])

    assert message =~ "unknown config key 'bogus_key'"
  end

  defp unwrap({:ok, result}), do: result
  defp unwrap({:error, _} = error), do: error

  # Each call is refused with a ValueError whose message matches, and changes nothing.
  defp refused(%{agent: agent, tmp_dir: dir}, cases) do
    for {call, message} <- cases do
      before = snapshot(agent, dir)
      assert {:error, %PythonError{class: class, message: text}} = call.(agent)
      assert class in ["builtins.ValueError", "bridge.protocol.CallError"]
      assert text =~ message
      assert snapshot(agent, dir) == before, "#{text}: the refused call changed the agent"
    end

    # And the agent still works.
    assert Agent.select_action(agent, @obs) in [0, 1]
  end

  defp snapshot(agent, dir) do
    path = Path.join(dir, "snapshot.ckpt")
    :ok = Agent.save(agent, path)
    File.read!(path)
  end
end
