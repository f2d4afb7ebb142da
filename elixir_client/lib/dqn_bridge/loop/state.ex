defmodule DQNBridge.Loop.State do
  @moduledoc """
  What loop handlers see and return.

    * `agent` - the `DQNBridge.Agent`
    * `env` - the `DQNBridge.Env.Vector` being stepped (one slot for a single env)
    * `step` - env steps so far (all slots together); `max_steps` the target
    * `iteration` - agent calls so far (one per vector step)
    * `episode` - episodes completed; `episodes_started` - episodes begun
    * `slot` - the env slot of the current `:episode_started`/`:episode_completed` event
    * `last_episode` - `%{slot:, return:, length:, terminated:}` of the last completed episode
    * `recent_returns` - returns of the last 100 episodes, newest first
    * `obs`, `actions` - the current observation and action per slot
    * `returns`, `lengths` - return and length so far of each slot's running episode
    * `metrics` - what handlers record (`:eval_return`, `:epsilon`, `:loss`, ...)
    * `handler_metadata` - a map where handlers may keep their own data
    * `status` - `:running`, then `:completed` or `:halted`
    * `started_at` - `System.monotonic_time/0` at the start
  """

  @enforce_keys [:agent, :env, :max_steps, :started_at]
  defstruct [
    :agent,
    :env,
    :max_steps,
    :started_at,
    :obs,
    :actions,
    :slot,
    :last_episode,
    batch?: false,
    step: 0,
    iteration: 0,
    episode: 0,
    episodes_started: 0,
    returns: [],
    lengths: [],
    recent_returns: [],
    metrics: %{},
    handler_metadata: %{},
    status: :running
  ]

  @typedoc "The loop state."
  @type t :: %__MODULE__{}

  @doc "Env steps per second since the loop started."
  @spec steps_per_second(t()) :: float()
  def steps_per_second(%__MODULE__{step: step, started_at: started_at}) do
    elapsed =
      System.convert_time_unit(System.monotonic_time() - started_at, :native, :microsecond)

    if elapsed > 0, do: step * 1.0e6 / elapsed, else: 0.0
  end

  @doc "Mean return of the last `n` completed episodes (nil before the first one)."
  @spec mean_return(t(), pos_integer()) :: float() | nil
  def mean_return(%__MODULE__{recent_returns: []}, _n), do: nil

  def mean_return(%__MODULE__{recent_returns: returns}, n) do
    last = Enum.take(returns, n)
    Enum.sum(last) / length(last)
  end
end
