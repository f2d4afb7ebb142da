defmodule DQNBridge.Env do
  @moduledoc """
  The environment behaviour the loop drives.

  An environment is a struct whose module implements this behaviour; the
  functions below dispatch on the struct, so callers never name the module:

      env = DQNBridge.Env.CartPole.new()
      {obs, env} = DQNBridge.Env.reset(env, 0)
      {obs, reward, terminated, truncated, env} = DQNBridge.Env.step(env, 1)

  `terminated` means the episode reached a terminal state (no bootstrapping);
  `truncated` means it was cut short by a time limit (bootstrapping goes on).
  """

  @typedoc "An environment struct whose module implements this behaviour."
  @type t :: struct()

  @typedoc "One observation: a flat list of floats."
  @type obs :: [float()]

  @typedoc "A discrete action."
  @type action :: non_neg_integer()

  @typedoc "What an environment says about itself."
  @type spec :: %{
          required(:id) => String.t(),
          required(:obs_dim) => pos_integer(),
          required(:n_actions) => pos_integer(),
          optional(:max_episode_steps) => pos_integer() | nil
        }

  @doc "Starts a new episode; `seed` (or `nil` to go on with the env's own RNG) fixes the start state."
  @callback reset(env :: t(), seed :: integer() | nil) :: {obs(), t()}

  @doc "Applies one action."
  @callback step(env :: t(), action()) ::
              {obs(), reward :: float(), terminated :: boolean(), truncated :: boolean(), t()}

  @doc "Describes the observation and action spaces."
  @callback spec(env :: t()) :: spec()

  @doc "A fresh, independent environment of the same kind (for evaluation or vectorising)."
  @callback clone(env :: t()) :: t()

  @doc "Releases what the environment holds (a Python-side env, for instance)."
  @callback close(env :: t()) :: :ok

  @optional_callbacks close: 1

  @doc "Starts a new episode. See `c:reset/2`."
  @spec reset(t(), integer() | nil) :: {obs(), t()}
  def reset(%module{} = env, seed), do: module.reset(env, seed)

  @doc "Applies one action. See `c:step/2`."
  @spec step(t(), action()) :: {obs(), float(), boolean(), boolean(), t()}
  def step(%module{} = env, action), do: module.step(env, action)

  @doc "Describes the environment. See `c:spec/1`."
  @spec spec(t()) :: spec()
  def spec(%module{} = env), do: module.spec(env)

  @doc "A fresh environment of the same kind. See `c:clone/1`."
  @spec clone(t()) :: t()
  def clone(%module{} = env), do: module.clone(env)

  @doc "Releases the environment's resources, if it holds any."
  @spec close(t()) :: :ok
  def close(%module{} = env) do
    if function_exported?(module, :close, 1), do: module.close(env), else: :ok
  end
end
