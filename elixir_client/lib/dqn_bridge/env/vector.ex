defmodule DQNBridge.Env.Vector do
  @moduledoc """
  N environments stepped together, so the agent is asked once per N env steps.

  Slots reset themselves: when a slot's episode ends, `step/2` resets it and
  returns the new episode's first observation in `obs`, and the last
  observation of the ended one in `final_obs` — the shapes
  `DQNBridge.Agent.step/6` takes.

      vec = DQNBridge.Env.Vector.new(DQNBridge.Env.CartPole.new(), 8)
      {obs, vec} = DQNBridge.Env.Vector.reset(vec, 0)   # 8 observations, seeds 0..7
      {obs, rewards, terminated, truncated, final_obs, vec} =
        DQNBridge.Env.Vector.step(vec, List.duplicate(1, 8))
  """

  alias DQNBridge.Env

  @enforce_keys [:envs]
  defstruct [:envs]

  @typedoc "N environments, slot i at position i."
  @type t :: %__MODULE__{envs: [Env.t()]}

  @doc "N environments: `env` and `n - 1` clones of it (or exactly the given list)."
  @spec new(Env.t() | [Env.t()], pos_integer()) :: t()
  def new(envs, n \\ 1)
  def new([_ | _] = envs, _n), do: %__MODULE__{envs: envs}

  def new(env, n) when is_integer(n) and n >= 1 do
    %__MODULE__{envs: [env | for(_ <- 2..n//1, do: Env.clone(env))]}
  end

  @doc "How many slots."
  @spec size(t()) :: pos_integer()
  def size(%__MODULE__{envs: envs}), do: length(envs)

  @doc "Resets every slot; slot i gets `seed + i` (or its own RNG when `seed` is nil)."
  @spec reset(t(), integer() | nil) :: {[Env.obs()], t()}
  def reset(%__MODULE__{envs: envs} = vec, seed) do
    {obs, envs} =
      envs
      |> Enum.with_index()
      |> Enum.map(fn {env, i} -> Env.reset(env, seed && seed + i) end)
      |> Enum.unzip()

    {obs, %{vec | envs: envs}}
  end

  @doc """
  Steps slot i with action i, resetting the slots whose episode ended.

  Returns `{obs, rewards, terminated, truncated, final_obs, vec}`: `final_obs`
  is `nil` when no episode ended, else the batch with each ended slot's last
  observation (other rows equal `obs`).
  """
  @spec step(t(), [Env.action()]) ::
          {[Env.obs()], [float()], [boolean()], [boolean()], [Env.obs()] | nil, t()}
  def step(%__MODULE__{envs: [env]} = vec, [action]) do
    {obs, last, reward, terminated, truncated, env} = step_slot(env, action)
    final = if terminated or truncated, do: [last]
    {[obs], [reward], [terminated], [truncated], final, %{vec | envs: [env]}}
  end

  def step(%__MODULE__{envs: envs} = vec, actions) do
    {rows, any_done?} =
      Enum.zip_with(envs, actions, &step_slot/2)
      |> Enum.map_reduce(false, fn {_, _, _, te, tr, _} = row, acc -> {row, acc or te or tr} end)

    obs = Enum.map(rows, &elem(&1, 0))
    final = if any_done?, do: Enum.map(rows, &elem(&1, 1))

    {obs, Enum.map(rows, &elem(&1, 2)), Enum.map(rows, &elem(&1, 3)),
     Enum.map(rows, &elem(&1, 4)), final, %{vec | envs: Enum.map(rows, &elem(&1, 5))}}
  end

  # One slot's step: {obs to act on next, last obs of the step, reward, terminated,
  # truncated, env}, reset when its episode ended.
  defp step_slot(env, action) do
    {obs, reward, terminated, truncated, env} = Env.step(env, action)

    if terminated or truncated do
      {reset_obs, env} = Env.reset(env, nil)
      {reset_obs, obs, reward, terminated, truncated, env}
    else
      {obs, obs, reward, terminated, truncated, env}
    end
  end

  @doc "Closes every slot."
  @spec close(t()) :: :ok
  def close(%__MODULE__{envs: envs}), do: Enum.each(envs, &Env.close/1)
end
