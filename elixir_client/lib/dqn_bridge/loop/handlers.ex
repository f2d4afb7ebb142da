defmodule DQNBridge.Loop.Handlers do
  @moduledoc """
  Ready handlers for `DQNBridge.Loop`, each attached with a pipe:

      Loop.dqn(agent, env)
      |> Handlers.evaluate(every: 1_000, episodes: 10)
      |> Handlers.checkpoint("runs/x/best.ckpt", best: true)
      |> Handlers.early_stop(475.0, on: :eval_return)
      |> Handlers.metrics_csv("runs/x/metrics.csv")
      |> Handlers.log(every: 1_000)
      |> Loop.run(steps: 20_000)

  Handlers that use an evaluation result (`checkpoint(best: true)`,
  `early_stop(on: :eval_return)`, the CSV's eval rows) must come after
  `evaluate/2` in the pipe, as they run in the order they were added.
  """

  alias DQNBridge.{Agent, Loop}
  alias DQNBridge.Loop.State

  @csv_header "step,episode,episode_return,episode_length,epsilon,loss,eval_return,steps_per_second\n"

  @doc """
  Greedy evaluation every `every` env steps: `episodes` episodes on fresh clones
  of the env, stepped together with batched greedy `select_action` calls.

  Records `:eval_return` (the mean), `:eval_returns`, `:eval_step`,
  `:best_eval_return` and `:best_eval_step` in `state.metrics`.

  ## Options
    * `:every` - env steps between evaluations (default 1000)
    * `:episodes` - episodes per evaluation (default 10)
    * `:seed` - episode i of every evaluation starts from seed `seed + i` (default 1000000)
    * `:env` - evaluate on this env instead of a clone of the training env
  """
  @spec evaluate(Loop.t(), keyword()) :: Loop.t()
  def evaluate(%Loop{} = loop, opts \\ []) do
    opts = Keyword.validate!(opts, [:env, every: 1_000, episodes: 10, seed: 1_000_000])

    Loop.handle_event(
      loop,
      :step_completed,
      fn state ->
        env = opts[:env] || hd(state.env.envs)
        returns = Loop.evaluate(state.agent, env, episodes: opts[:episodes], seed: opts[:seed])
        mean = Enum.sum(returns) / length(returns)
        best = state.metrics[:best_eval_return]

        metrics =
          state.metrics
          |> Map.merge(%{eval_return: mean, eval_returns: returns, eval_step: state.step})
          |> Map.merge(
            if best == nil or mean > best,
              do: %{best_eval_return: mean, best_eval_step: state.step},
              else: %{}
          )

        {:continue, %{state | metrics: metrics}}
      end,
      every: opts[:every]
    )
  end

  @doc """
  Saves a checkpoint to `path`.

  ## Options
    * `:best` - `true`: save after each evaluation whose mean return is the best so far
      (needs `evaluate/2` before it)
    * `:every` - save every n env steps
  Give one of them.
  """
  @spec checkpoint(Loop.t(), Path.t(), keyword()) :: Loop.t()
  def checkpoint(%Loop{} = loop, path, opts) do
    case Keyword.validate!(opts, [:best, :every]) do
      [best: true] ->
        Loop.handle_event(loop, :step_completed, &save_if_best(&1, path), &fresh_eval?/1)

      [every: n] ->
        Loop.handle_event(loop, :step_completed, fn state -> {:continue, save!(state, path)} end,
          every: n
        )

      other ->
        raise ArgumentError, "checkpoint needs best: true or every: n, got: #{inspect(other)}"
    end
  end

  defp save_if_best(state, path) do
    best = state.handler_metadata[:checkpoint_best]

    if best == nil or state.metrics.eval_return > best do
      state = save!(state, path)
      {:continue, put_in(state.handler_metadata[:checkpoint_best], state.metrics.eval_return)}
    else
      {:continue, state}
    end
  end

  defp save!(state, path) do
    case Agent.save(state.agent, path) do
      :ok -> put_in(state.metrics[:checkpoint_step], state.step)
      {:error, reason} -> raise "checkpoint to #{path} failed: #{format_error(reason)}"
    end
  end

  @doc """
  Halts the loop once the mean return reaches `target`.

  ## Options
    * `:on` - `:mean_return` (the mean of the last `window` training episodes,
      checked after each episode; the default) or `:eval_return` (the greedy
      evaluation mean, checked after each evaluation; needs `evaluate/2` before it)
    * `:window` - episodes in the training mean (default 100)
  """
  @spec early_stop(Loop.t(), number(), keyword()) :: Loop.t()
  def early_stop(%Loop{} = loop, target, opts \\ []) when is_number(target) do
    opts = Keyword.validate!(opts, on: :mean_return, window: 100)

    case opts[:on] do
      :mean_return ->
        window = opts[:window]

        Loop.handle_event(loop, :episode_completed, fn state ->
          full? = length(state.recent_returns) >= window

          if full? and State.mean_return(state, window) >= target,
            do: {:halt_loop, state},
            else: {:continue, state}
        end)

      :eval_return ->
        Loop.handle_event(
          loop,
          :step_completed,
          fn state ->
            if state.metrics.eval_return >= target,
              do: {:halt_loop, state},
              else: {:continue, state}
          end,
          &fresh_eval?/1
        )

      other ->
        raise ArgumentError,
              "early_stop on: must be :mean_return or :eval_return, got: #{inspect(other)}"
    end
  end

  @doc """
  Writes one CSV row per completed episode, and one per evaluation, to `path`.

  Columns: `#{String.trim(@csv_header)}` (a cell is empty where the value
  was not measured: eval rows have no episode return, episode rows no eval
  return). The same columns as `python -m bridge train`, so
  `python -m bridge plot` reads either.
  """
  @spec metrics_csv(Loop.t(), Path.t()) :: Loop.t()
  def metrics_csv(%Loop{} = loop, path) do
    loop
    |> Loop.handle_event(:started, fn state ->
      File.mkdir_p!(Path.dirname(path))
      File.write!(path, @csv_header)
      {:continue, state}
    end)
    |> Loop.handle_event(:episode_completed, fn state ->
      state = refresh_agent_metrics(state)
      episode = state.last_episode
      append_row(path, state, [episode.return, episode.length, nil])
      {:continue, state}
    end)
    |> Loop.handle_event(
      :step_completed,
      fn state ->
        state = refresh_agent_metrics(state)
        append_row(path, state, [nil, nil, state.metrics.eval_return])
        {:continue, state}
      end,
      &fresh_eval?/1
    )
  end

  defp append_row(path, state, [episode_return, episode_length, eval_return]) do
    row = [
      state.step,
      state.episode,
      episode_return,
      episode_length,
      state.metrics[:epsilon],
      state.metrics[:loss],
      eval_return,
      Float.round(State.steps_per_second(state), 1)
    ]

    File.write!(path, [Enum.map_join(row, ",", &cell/1), ?\n], [:append])
  end

  defp cell(nil), do: ""
  defp cell(value) when is_float(value), do: Float.to_string(value)
  defp cell(value), do: to_string(value)

  @doc """
  Prints a progress line every `every` env steps, and a last one at the end.

  ## Options
    * `:every` - env steps between lines (default 1000)
    * `:device` - where to write (default `:stdio`)
    * `:live` - rewrite one terminal line in place (default `true`) instead of
      printing a line each time
  """
  @spec log(Loop.t(), keyword()) :: Loop.t()
  def log(%Loop{} = loop, opts \\ []) do
    opts = Keyword.validate!(opts, every: 1_000, device: :stdio, live: true)
    {device, live?} = {opts[:device], opts[:live]}

    print = fn state, last? ->
      state = refresh_agent_metrics(state)
      line = progress_line(state)
      printed? = state.handler_metadata[:log_step] == state.step

      cond do
        live? and last? -> IO.write(device, ["\r\e[K", line, ?\n])
        live? -> IO.write(device, ["\r\e[K", line])
        last? and printed? -> :ok
        true -> IO.write(device, [line, ?\n])
      end

      {:continue, put_in(state.handler_metadata[:log_step], state.step)}
    end

    loop
    |> Loop.handle_event(:step_completed, &print.(&1, false), every: opts[:every])
    |> Loop.handle_event(:completed, &print.(&1, true))
    |> Loop.handle_event(:halted, &print.(&1, true))
  end

  @doc "The progress line `log/2` prints."
  @spec progress_line(State.t()) :: String.t()
  def progress_line(%State{} = state) do
    m = state.metrics

    [
      "step #{state.step}/#{state.max_steps}",
      "episodes #{state.episode}",
      "return(10) #{fmt(State.mean_return(state, 10), 1)}",
      "eps #{fmt(m[:epsilon], 3)}",
      "loss #{fmt(m[:loss], 4)}",
      m[:eval_return] && "eval #{fmt(m.eval_return, 1)} (best #{fmt(m.best_eval_return, 1)})",
      "#{round(State.steps_per_second(state))} steps/s"
    ]
    |> Enum.reject(&is_nil/1)
    |> Enum.join(" | ")
  end

  defp fmt(nil, _), do: "-"
  defp fmt(x, digits), do: :erlang.float_to_binary(x * 1.0, decimals: digits)

  @doc """
  Reads the agent's epsilon, loss and update count into `state.metrics`
  (one `DQNBridge.Agent.info/2` call, at most once per env step).
  """
  @spec refresh_agent_metrics(State.t()) :: State.t()
  def refresh_agent_metrics(%State{} = state) do
    if state.metrics[:info_step] == state.step do
      state
    else
      case Agent.info(state.agent) do
        %{} = info ->
          metrics = Map.merge(state.metrics, Map.take(info, [:epsilon, :loss, :q_mean, :updates]))
          %{state | metrics: Map.put(metrics, :info_step, state.step)}

        {:error, reason} ->
          raise "Agent.info failed: #{format_error(reason)}"
      end
    end
  end

  defp fresh_eval?(state), do: state.metrics[:eval_step] == state.step

  defp format_error(%DQNBridge.PythonError{} = error), do: Exception.message(error)
  defp format_error(reason), do: inspect(reason)
end
