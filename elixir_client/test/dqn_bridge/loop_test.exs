defmodule DQNBridge.LoopTest do
  use ExUnit.Case, async: true

  import DQNBridge.PythonCase

  alias DQNBridge.{Agent, Loop, Python}
  alias DQNBridge.Env.{CartPole, Vector}
  alias DQNBridge.Loop.{Handlers, State}

  @moduletag :integration
  @moduletag timeout: 120_000

  @events [:started, :episode_started, :step_completed, :episode_completed, :halted, :completed]

  setup_all do
    py = start_supervised!(Python)
    # learning_starts beyond these short runs: the loop's bookkeeping is what is tested here
    %{
      agent:
        start_supervised!({Agent, python: py, config: quick_config(learning_starts: 100_000)}),
      py: py
    }
  end

  # A loop whose handlers send {event, step, episode, slot} to the test process.
  defp recording(loop, filters \\ %{}) do
    me = self()

    Enum.reduce(@events, loop, fn event, loop ->
      Loop.handle_event(
        loop,
        event,
        fn state ->
          send(me, {:event, event, state.step, state.episode, state.slot})
          {:continue, state}
        end,
        Map.get(filters, event, :always)
      )
    end)
  end

  defp received do
    receive do
      {:event, event, step, episode, slot} -> [{event, step, episode, slot} | received()]
    after
      0 -> []
    end
  end

  test "events fire in order, one :step_completed per env step", %{agent: agent} do
    state = Loop.dqn(agent, CartPole.new()) |> recording() |> Loop.run(steps: 300, seed: 0)
    events = received()

    assert %State{status: :completed, step: 300} = state

    assert [{:started, 0, 0, nil}, {:episode_started, 0, 0, 0}, {:step_completed, 1, 0, 0} | _] =
             events

    assert List.last(events) == {:completed, 300, state.episode, state.slot}
    refute Enum.any?(events, &match?({:halted, _, _, _}, &1))

    steps = for {:step_completed, step, _, _} <- events, do: step
    assert steps == Enum.to_list(1..300)

    # every completed episode is followed by the next one's start, and by the steps of that one
    kinds = Enum.map(events, &elem(&1, 0))
    completed = Enum.count(kinds, &(&1 == :episode_completed))
    assert completed == state.episode and completed > 3
    assert Enum.count(kinds, &(&1 == :episode_started)) == completed + 1

    for [
          {:step_completed, s, _, _},
          {:episode_completed, s, _, _},
          {:episode_started, s, _, _},
          next
        ] <-
          Enum.chunk_every(events, 4, 1, :discard) do
      assert {:step_completed, _, _, _} = next
    end

    lengths = Enum.map(state.recent_returns, &trunc/1)
    assert Enum.sum(lengths) + Enum.at(state.lengths, 0) == 300
  end

  test "filters: every: n, first: n and predicates are honoured", %{agent: agent} do
    filters = %{
      step_completed: [every: 50],
      episode_completed: [first: 2],
      episode_started: fn state -> rem(state.episodes_started, 2) == 1 end
    }

    state = Loop.dqn(agent, CartPole.new()) |> recording(filters) |> Loop.run(steps: 200, seed: 1)
    events = received()

    assert for({:step_completed, step, _, _} <- events, do: step) == [50, 100, 150, 200]
    assert for({:episode_completed, _, episode, _} <- events, do: episode) == [1, 2]
    started = for {:episode_started, _, episode, _} <- events, do: episode + 1
    # No episode starts after the last step, even when that step ended one.
    assert state.episodes_started in [state.episode, state.episode + 1]
    assert started == Enum.filter(1..state.episodes_started, &(rem(&1, 2) == 1))
  end

  test "a handler returning {:halt_loop, state} stops the loop after that event", %{agent: agent} do
    state =
      Loop.dqn(agent, CartPole.new())
      |> Loop.handle_event(:step_completed, &{:halt_loop, &1}, fn s -> s.step == 42 end)
      |> recording()
      |> Loop.run(steps: 1_000, seed: 0)

    events = received()
    assert %State{status: :halted, step: 42} = state
    # the other handlers of the halting event still run
    assert {:step_completed, 42, _, _} = Enum.at(events, -2)
    assert {:halted, 42, _, _} = List.last(events)
    refute Enum.any?(events, &match?({:completed, _, _, _}, &1))
  end

  test "vectorised: N envs per agent call, filters count env steps", %{agent: agent} do
    vec = Vector.new(CartPole.new(), 4)

    state =
      Loop.dqn(agent, vec)
      |> recording(%{step_completed: [every: 10]})
      |> Loop.run(steps: 200, seed: 0)

    events = received()
    assert %State{status: :completed, step: 200, iteration: 50} = state

    assert for({:step_completed, step, _, _} <- events, do: step) == [
             12,
             20,
             32,
             40,
             52,
             60,
             72,
             80,
             92,
             100,
             112,
             120,
             132,
             140,
             152,
             160,
             172,
             180,
             192,
             200
           ]

    starts = for {:episode_started, 0, _, slot} <- events, do: slot
    assert starts == [0, 1, 2, 3]
    slots = for {:episode_completed, _, _, slot} <- events, uniq: true, do: slot
    assert Enum.sort(slots) == [0, 1, 2, 3]
    assert Agent.info(agent).env_steps >= 200
  end

  test "bad events, handlers and filters are refused with a helpful message", %{agent: agent} do
    loop = Loop.dqn(agent, CartPole.new())

    assert_raise ArgumentError, ~r/unknown loop event :step_done; events are/, fn ->
      Loop.handle_event(loop, :step_done, &{:continue, &1})
    end

    assert_raise ArgumentError, ~r/function of one argument/, fn ->
      Loop.handle_event(loop, :started, fn -> :ok end)
    end

    assert_raise ArgumentError, ~r/bad loop filter \[every: 0\]/, fn ->
      Loop.handle_event(loop, :started, &{:continue, &1}, every: 0)
    end

    assert_raise ArgumentError, ~r/returned :ok; expected/, fn ->
      loop |> Loop.handle_event(:started, fn _ -> :ok end) |> Loop.run(steps: 1)
    end

    assert_raise ArgumentError, ~r/steps: a positive integer/, fn -> Loop.run(loop, steps: 0) end
  end

  test "evaluate/3 plays greedy episodes in one batch per step", %{agent: agent} do
    returns = Loop.evaluate(agent, CartPole.new(), episodes: 3, seed: 5)
    assert length(returns) == 3
    assert Enum.all?(returns, &(&1 >= 1.0 and &1 <= 500.0))
    assert Loop.evaluate(agent, CartPole.new(), episodes: 3, seed: 5) == returns
  end

  @tag :tmp_dir
  test "ready handlers: evaluation, best checkpoint, metrics CSV, log, early stop", %{
    py: py,
    tmp_dir: dir
  } do
    {:ok, agent} = Agent.start_link(python: py, config: quick_config())
    csv = Path.join(dir, "metrics.csv")
    checkpoint = Path.join(dir, "best.msgpack")

    {state, output} =
      ExUnit.CaptureIO.with_io(fn ->
        Loop.dqn(agent, CartPole.new())
        |> Handlers.evaluate(every: 100, episodes: 2)
        |> Handlers.checkpoint(checkpoint, best: true)
        |> Handlers.metrics_csv(csv)
        |> Handlers.log(every: 100, live: false)
        |> Handlers.early_stop(1.0, on: :mean_return, window: 15)
        |> Loop.run(steps: 2_000, seed: 0)
      end)

    # fifteen episodes of at least one step each, then the early stop
    assert %State{status: :halted, episode: 15} = state
    assert state.step > 200
    assert File.exists?(checkpoint)
    assert is_float(state.metrics.eval_return)

    [header | rows] = csv |> File.read!() |> String.split("\n", trim: true)

    assert header ==
             "step,episode,episode_return,episode_length,epsilon,loss,eval_return,steps_per_second"

    rows = Enum.map(rows, &String.split(&1, ","))
    assert Enum.all?(rows, &(length(&1) == 8))
    assert [_, "1", return, length, eps, _, "", sps] = hd(rows)
    assert {_, ""} = Float.parse(return)
    assert {_, ""} = Integer.parse(length)
    assert {_, ""} = Float.parse(eps)
    assert {_, ""} = Float.parse(sps)
    eval_rows = for [step, _, "", "", _, _, eval, _] <- rows, do: {step, eval}
    assert [{"100", _} | _] = eval_rows

    assert output =~ ~r/step 100\/2000 \| episodes \d+ \| return\(10\) [\d.]+ \| eps [\d.]+/
    assert output =~ "eval "
  end

  test "early stop on the evaluation mean", %{agent: agent} do
    state =
      Loop.dqn(agent, CartPole.new())
      |> Handlers.evaluate(every: 50, episodes: 1)
      |> Handlers.early_stop(0.0, on: :eval_return)
      |> Loop.run(steps: 1_000)

    assert %State{status: :halted, step: 50} = state
  end
end
