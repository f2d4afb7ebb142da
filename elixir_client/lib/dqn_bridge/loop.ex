defmodule DQNBridge.Loop do
  @moduledoc """
  An `Axon.Loop`-style training loop for a DQN agent: acting and learning interleaved.

  Build it with `dqn/3`, extend it with `handle_event/4` (or the ready handlers in
  `DQNBridge.Loop.Handlers`), run it with `run/2`:

      {:ok, agent} = DQNBridge.Agent.start_link(config: [seed: 0])

      DQNBridge.Loop.dqn(agent, DQNBridge.Env.CartPole.new())
      |> DQNBridge.Loop.handle_event(:episode_completed, fn state ->
        IO.puts("episode \#{state.episode}: \#{state.last_episode.return}")
        {:continue, state}
      end, every: 10)
      |> DQNBridge.Loop.run(steps: 20_000, seed: 0)

  Each iteration steps the environment (or every slot of a
  `DQNBridge.Env.Vector`) and makes one `DQNBridge.Agent.step/6` call, which
  stores the transitions, trains when due and returns the next actions.

  ## Events

  Fired in this order:

    * `:started` - once, before the first reset
    * `:episode_started` - each time an episode starts (`state.slot` says which env slot)
    * `:step_completed` - after every iteration (one env step per slot)
    * `:episode_completed` - after the step that ended an episode (`state.last_episode`)
    * `:halted` - once, if a handler returned `{:halt_loop, state}`; then the loop ends
    * `:completed` - once, when `steps:` env steps are done (not after `:halted`)

  A handler takes the `DQNBridge.Loop.State` and returns `{:continue, state}` or
  `{:halt_loop, state}`. All handlers of an event run, in the order they were
  added; the loop stops after the event if any of them asked to halt.

  ## Filters

  Each event has a counter: env steps for `:step_completed`, episodes for
  `:episode_started` and `:episode_completed`, 1 for the others.

    * `:always` (the default) - every time
    * `every: n` - when the counter reaches a multiple of n (with N vectorised
      envs the step counter moves by N, so this means "crossed a multiple")
    * `first: n` - while the counter is at most n
    * a function `state -> boolean`
  """

  alias DQNBridge.{Agent, Env}
  alias DQNBridge.Env.Vector
  alias DQNBridge.Loop.State

  @events [:started, :episode_started, :step_completed, :episode_completed, :halted, :completed]

  @enforce_keys [:agent, :env]
  defstruct [:agent, :env, handlers: %{}, timeout: 30_000]

  @typedoc "A loop: the agent, the env (or vector of envs), and the handlers per event."
  @type t :: %__MODULE__{
          agent: Agent.t(),
          env: Env.t() | Vector.t(),
          handlers: %{event() => [{handler(), filter()}]},
          timeout: timeout()
        }

  @typedoc "A loop event."
  @type event ::
          :started
          | :episode_started
          | :step_completed
          | :episode_completed
          | :halted
          | :completed

  @typedoc "A handler: gets the state, says whether to go on."
  @type handler :: (State.t() -> {:continue, State.t()} | {:halt_loop, State.t()})

  @typedoc "When a handler runs; see the module doc."
  @type filter ::
          :always | [every: pos_integer()] | [first: pos_integer()] | (State.t() -> boolean())

  @doc """
  A DQN loop for `agent` on `env` (one env, or a `DQNBridge.Env.Vector` of them).

  ## Options
    * `:timeout` - ms to wait for each agent call (default 30000)
  """
  @spec dqn(Agent.t(), Env.t() | Vector.t(), keyword()) :: t()
  def dqn(agent, env, opts \\ []) do
    opts = Keyword.validate!(opts, timeout: 30_000)
    %__MODULE__{agent: agent, env: env, timeout: opts[:timeout]}
  end

  @doc "Adds `handler` for `event`, run when `filter` passes. See the module doc."
  @spec handle_event(t(), event(), handler(), filter()) :: t()
  def handle_event(%__MODULE__{} = loop, event, handler, filter \\ :always) do
    unless event in @events do
      raise ArgumentError, "unknown loop event #{inspect(event)}; events are: #{inspect(@events)}"
    end

    unless is_function(handler, 1) do
      raise ArgumentError,
            "a loop handler must be a function of one argument (the state), got: #{inspect(handler)}"
    end

    check_filter!(filter)

    update_in(
      loop.handlers,
      &Map.update(&1, event, [{handler, filter}], fn hs -> hs ++ [{handler, filter}] end)
    )
  end

  defp check_filter!(:always), do: :ok
  defp check_filter!(every: n) when is_integer(n) and n > 0, do: :ok
  defp check_filter!(first: n) when is_integer(n) and n > 0, do: :ok
  defp check_filter!(fun) when is_function(fun, 1), do: :ok

  defp check_filter!(other) do
    raise ArgumentError,
          "bad loop filter #{inspect(other)}; use :always, every: n, first: n (n a positive integer) " <>
            "or a function of the state returning a boolean"
  end

  @doc """
  Runs the loop and returns its final state (`state.status` is `:completed` or `:halted`).

  Raises if the agent returns an error.

  ## Options
    * `:steps` - env steps to run (required; with N envs, rounded up to a multiple of N)
    * `:seed` - the first reset's seed; env slot i gets `seed + i` (default 0)
  """
  @spec run(t(), keyword()) :: State.t()
  def run(%__MODULE__{} = loop, opts) do
    opts = Keyword.validate!(opts, [:steps, seed: 0])

    steps =
      case opts[:steps] do
        n when is_integer(n) and n > 0 ->
          n

        other ->
          raise ArgumentError, "Loop.run needs steps: a positive integer, got: #{inspect(other)}"
      end

    {vec, batch?} =
      case loop.env do
        %Vector{} = vec -> {vec, true}
        env -> {Vector.new(env, 1), false}
      end

    n = Vector.size(vec)

    state = %State{
      agent: loop.agent,
      env: vec,
      batch?: batch?,
      max_steps: steps,
      returns: List.duplicate(0.0, n),
      lengths: List.duplicate(0, n),
      started_at: System.monotonic_time()
    }

    with {:continue, state} <- fire(loop, :started, state),
         {obs, vec} = Vector.reset(state.env, opts[:seed]),
         state = %{state | env: vec, obs: obs},
         {:continue, state} <- start_episodes(loop, state, Enum.to_list(0..(n - 1))),
         actions = first_actions(loop, state),
         {:continue, state} <- iterate(loop, %{state | actions: actions}) do
      finish(loop, :completed, state)
    else
      {:halt_loop, state} -> finish(loop, :halted, state)
    end
  end

  defp iterate(_loop, %State{step: step, max_steps: max} = state) when step >= max,
    do: {:continue, state}

  defp iterate(loop, state) do
    {obs, rewards, terminated, truncated, final, vec} = Vector.step(state.env, state.actions)
    actions = agent_step(loop, state.batch?, obs, rewards, terminated, truncated, final)

    state = %{
      state
      | env: vec,
        obs: obs,
        actions: actions,
        step: state.step + length(obs),
        iteration: state.iteration + 1,
        returns: Enum.zip_with(state.returns, rewards, &(&1 + &2)),
        lengths: Enum.map(state.lengths, &(&1 + 1))
    }

    with {:continue, state} <- fire(loop, :step_completed, state),
         {:continue, state} <- end_episodes(loop, state, terminated, final && truncated) do
      iterate(loop, state)
    end
  end

  defp end_episodes(_loop, state, _terminated, nil = _final), do: {:continue, state}

  defp end_episodes(loop, state, terminated, truncated) do
    done =
      [terminated, truncated]
      |> Enum.zip_with(fn [te, tr] -> te or tr end)
      |> Enum.with_index()
      |> Enum.filter(&elem(&1, 0))
      |> Enum.map(&elem(&1, 1))

    case done do
      [] ->
        {:continue, state}

      slots ->
        result =
          Enum.reduce(slots, {:continue, state}, fn slot, {status, state} ->
            state = complete_episode(state, slot, Enum.at(terminated, slot))
            merge(status, fire(loop, :episode_completed, state))
          end)

        with {:continue, state} <- result do
          if state.step < state.max_steps,
            do: start_episodes(loop, state, slots),
            else: {:continue, state}
        end
    end
  end

  # A slot's terminated/truncated flags only say an episode ended when the vector
  # returned final observations; the loop passes `truncated` only in that case.
  defp complete_episode(state, slot, terminated) do
    episode = %{
      slot: slot,
      return: Enum.at(state.returns, slot),
      length: Enum.at(state.lengths, slot),
      terminated: terminated
    }

    %{
      state
      | episode: state.episode + 1,
        slot: slot,
        last_episode: episode,
        recent_returns: Enum.take([episode.return | state.recent_returns], 100),
        returns: List.replace_at(state.returns, slot, 0.0),
        lengths: List.replace_at(state.lengths, slot, 0)
    }
  end

  defp start_episodes(loop, state, slots) do
    Enum.reduce(slots, {:continue, state}, fn slot, {status, state} ->
      state = %{state | episodes_started: state.episodes_started + 1, slot: slot}
      merge(status, fire(loop, :episode_started, state))
    end)
  end

  defp merge(:continue, result), do: result
  defp merge(:halt_loop, {_, state}), do: {:halt_loop, state}

  defp first_actions(loop, state) do
    # A new run resets its envs: nothing may join an earlier run's last observation to them.
    ok!(Agent.begin_episodes(loop.agent, loop.timeout), :begin_episodes)
    first_step(loop, state)
  end

  defp first_step(loop, %State{batch?: false, obs: [obs]}) do
    [ok!(Agent.step(loop.agent, obs, 0.0, false, false, timeout: loop.timeout), :step)]
  end

  defp first_step(loop, %State{obs: obs}) do
    falses = Enum.map(obs, fn _ -> false end)
    zeros = Enum.map(obs, fn _ -> 0.0 end)
    ok!(Agent.step(loop.agent, obs, zeros, falses, falses, timeout: loop.timeout), :step)
  end

  defp agent_step(loop, false, [obs], [reward], [terminated], [truncated], final) do
    opts = if final, do: [final_obs: hd(final), timeout: loop.timeout], else: []
    [ok!(Agent.step(loop.agent, obs, reward, terminated, truncated, opts), :step)]
  end

  defp agent_step(loop, true, obs, rewards, terminated, truncated, final) do
    opts = if final, do: [final_obs: final, timeout: loop.timeout], else: []
    ok!(Agent.step(loop.agent, obs, rewards, terminated, truncated, opts), :step)
  end

  defp ok!({:error, %DQNBridge.PythonError{} = error}, _function), do: raise(error)
  defp ok!({:error, reason}, function), do: raise("Agent.#{function} failed: #{inspect(reason)}")
  defp ok!(result, _function), do: result

  defp finish(loop, status, state) do
    state = %{state | status: status}
    {_, state} = fire(loop, status, state)
    state
  end

  @doc false
  @spec fire(t(), event(), State.t()) :: {:continue | :halt_loop, State.t()}
  def fire(loop, event, state) do
    case loop.handlers do
      %{^event => handlers} ->
        Enum.reduce(handlers, {:continue, state}, fn {handler, filter}, {status, state} ->
          if passes?(filter, event, state) do
            case handler.(state) do
              {:continue, %State{} = state} ->
                {status, state}

              {:halt_loop, %State{} = state} ->
                {:halt_loop, state}

              other ->
                raise ArgumentError,
                      "a #{inspect(event)} handler returned #{inspect(other)}; " <>
                        "expected {:continue, state} or {:halt_loop, state}"
            end
          else
            {status, state}
          end
        end)

      _ ->
        {:continue, state}
    end
  end

  defp passes?(:always, _event, _state), do: true
  defp passes?(fun, _event, state) when is_function(fun, 1), do: fun.(state)

  defp passes?([every: n], event, state) do
    {previous, current} = counter(event, state)
    div(current, n) > div(previous, n)
  end

  defp passes?([first: n], event, state) do
    {previous, _current} = counter(event, state)
    previous < n
  end

  defp counter(:step_completed, state), do: {state.step - length(state.obs), state.step}
  defp counter(:episode_completed, state), do: {state.episode - 1, state.episode}
  defp counter(:episode_started, state), do: {state.episodes_started - 1, state.episodes_started}
  defp counter(_event, _state), do: {0, 1}

  @doc """
  Greedy returns of `agent` over `episodes` episodes of fresh clones of `env`,
  all stepped together with one batched `select_action` call per step.

  Episode i starts from seed `seed + i`. Returns the list of returns.
  """
  @spec evaluate(Agent.t(), Env.t(), keyword()) :: [float()]
  def evaluate(agent, env, opts \\ []) do
    opts = Keyword.validate!(opts, episodes: 10, seed: 1_000_000, timeout: 30_000)
    envs = for _ <- 1..opts[:episodes], do: Env.clone(env)

    try do
      envs
      |> Enum.with_index()
      |> Enum.map(fn {env, i} ->
        {obs, env} = Env.reset(env, opts[:seed] + i)
        {i, obs, env, 0.0}
      end)
      |> greedy_episodes(agent, opts[:timeout], %{})
    after
      Enum.each(envs, &Env.close/1)
    end
  end

  # `running` holds {slot, obs, env, return} per unfinished episode.
  defp greedy_episodes([], _agent, _timeout, done),
    do: done |> Enum.sort() |> Enum.map(&elem(&1, 1))

  defp greedy_episodes(running, agent, timeout, done) do
    batch = Enum.map(running, fn {_slot, obs, _env, _ret} -> obs end)

    actions =
      ok!(Agent.select_action(agent, batch, greedy: true, timeout: timeout), :select_action)

    {running, done} =
      running
      |> Enum.zip(actions)
      |> Enum.flat_map_reduce(done, fn {{slot, _obs, env, ret}, action}, done ->
        {obs, reward, terminated, truncated, env} = Env.step(env, action)

        if terminated or truncated,
          do: {[], Map.put(done, slot, ret + reward)},
          else: {[{slot, obs, env, ret + reward}], done}
      end)

    greedy_episodes(running, agent, timeout, done)
  end
end
