defmodule DQNBridge.Env.Gym do
  @moduledoc """
  Any gymnasium environment, run in a Python process and driven through the port.

      {:ok, agent} = DQNBridge.Agent.start_link(config: [env_id: "Acrobot-v1"])
      env = DQNBridge.Env.Gym.new("Acrobot-v1", python: DQNBridge.Agent.python(agent))
      {obs, env} = DQNBridge.Env.reset(env, 0)

  Each `reset/2` and `step/2` is one round trip, so a pure-Elixir env (such as
  `DQNBridge.Env.CartPole`) is faster where one exists; this one is for the rest.
  """

  @behaviour DQNBridge.Env

  alias DQNBridge.Python

  @enforce_keys [:python, :handle, :id, :spec]
  defstruct [:python, :handle, :id, :spec, make_opts: %{}, timeout: 30_000]

  @typedoc "A gymnasium env held by a Python server."
  @type t :: %__MODULE__{
          python: Python.server(),
          handle: term(),
          id: String.t(),
          spec: DQNBridge.Env.spec(),
          make_opts: map(),
          timeout: timeout()
        }

  @doc """
  Makes the gymnasium env `id` in a Python server.

  ## Options
    * `:python` - the `DQNBridge.Python` server to use, e.g. `DQNBridge.Agent.python(agent)`
      (default: a new server linked to the caller)
    * `:make_opts` - keyword arguments for `gymnasium.make`, as a map
    * `:timeout` - ms to wait for each call (default 30000)

  Raises `DQNBridge.PythonError` if gymnasium cannot make it.
  """
  @spec new(String.t(), keyword()) :: t()
  def new(id, opts \\ []) when is_binary(id) do
    opts = Keyword.validate!(opts, [:python, make_opts: %{}, timeout: 30_000])

    python =
      case opts[:python] do
        nil ->
          {:ok, pid} = Python.start_link()
          pid

        server ->
          server
      end

    handle = ok!(Python.call(python, :env_make, [id, Map.new(opts[:make_opts])], opts[:timeout]))
    spec = ok!(Python.call(python, :env_spec, [handle], opts[:timeout]))

    %__MODULE__{
      python: python,
      handle: handle,
      id: id,
      spec: to_spec(id, spec),
      make_opts: Map.new(opts[:make_opts]),
      timeout: opts[:timeout]
    }
  end

  @impl true
  def reset(%__MODULE__{} = env, seed) do
    {ok!(Python.call(env.python, :env_reset, [env.handle, seed], env.timeout)), env}
  end

  @impl true
  def step(%__MODULE__{} = env, action) do
    {obs, reward, terminated, truncated} =
      ok!(Python.call(env.python, :env_step, [env.handle, action], env.timeout))

    {obs, reward * 1.0, terminated, truncated, env}
  end

  @impl true
  def spec(%__MODULE__{spec: spec}), do: spec

  @impl true
  def clone(%__MODULE__{} = env) do
    new(env.id, python: env.python, make_opts: env.make_opts, timeout: env.timeout)
  end

  @impl true
  def close(%__MODULE__{} = env) do
    case Python.call(env.python, :env_close, [env.handle], env.timeout) do
      {:ok, _} -> :ok
      {:error, _} -> :ok
    end
  end

  defp to_spec(id, spec) do
    %{
      id: id,
      obs_dim: spec["obs_dim"],
      n_actions: spec["n_actions"],
      max_episode_steps: spec["max_episode_steps"]
    }
  end

  defp ok!({:ok, value}), do: value
  defp ok!({:error, %DQNBridge.PythonError{} = error}), do: raise(error)
  defp ok!({:error, reason}), do: raise("gymnasium env call failed: #{inspect(reason)}")
end
