defmodule DQNBridge.Agent do
  @moduledoc """
  A DQN agent living in a Python process, driven from Elixir.

  `start_link/1` starts (and links) a `DQNBridge.Python` server, and asks it for
  a new agent built from `config:` — a map or keyword list of `DQNConfig` fields,
  checked on the Python side by the same `DQNConfig` the Python CLI uses, so an
  unknown key or a bad value is refused with a message naming it.

  Every call is forwarded to the Python server without waiting in the agent
  process, and the reply goes straight back to the caller. Each takes a
  `:timeout` (default #{30_000} ms); a call that times out returns
  `{:error, :timeout}` and its late reply is dropped. Errors raised in Python
  come back as `{:error, %DQNBridge.PythonError{}}`.

  ## The manual loop

  The way the Elixir forum sketches DQN — act, step the env, store the
  transition, train — works as written:

      {:ok, agent} = DQNBridge.Agent.start_link(config: [seed: 0, learning_starts: 100])
      {obs, env} = DQNBridge.Env.reset(DQNBridge.Env.CartPole.new(), 0)

      Enum.reduce(1..1_000, {obs, env}, fn _, {obs, env} ->
        action = DQNBridge.Agent.select_action(agent, obs)
        {next_obs, reward, terminated, truncated, env} = DQNBridge.Env.step(env, action)

        :ok =
          DQNBridge.Agent.observe(agent, %{obs: obs, action: action, reward: reward,
            next_obs: next_obs, terminated: terminated, truncated: truncated})

        _metrics_or_skipped = DQNBridge.Agent.optimize(agent)

        if terminated or truncated, do: DQNBridge.Env.reset(env, nil), else: {next_obs, env}
      end)

  That is four round trips per env step. `step/6` fuses them into one (store
  the previous transition, train when due, act), and takes a batch of
  observations so N environments cost one round trip; `DQNBridge.Loop` uses it.
  """

  use GenServer

  alias DQNBridge.{Python, PythonError}

  @default_timeout 30_000
  @start_timeout 120_000

  @typedoc "A running agent: its pid or registered name."
  @type t :: GenServer.server()

  @typedoc "One observation (a list of numbers) or a batch of them (a list of such lists)."
  @type obs :: [number()] | [[number()]]

  @typedoc "One action or, for a batch of observations, one per row."
  @type actions :: non_neg_integer() | [non_neg_integer()]

  @typedoc "Why a call failed."
  @type error ::
          {:error, PythonError.t() | :timeout | {:python_exited, non_neg_integer()}}

  @typedoc "One transition, or a batch of them (one row per env slot)."
  @type transition :: %{
          obs: obs(),
          action: actions(),
          reward: number() | [number()],
          next_obs: obs(),
          terminated: boolean() | [boolean()],
          truncated: boolean() | [boolean()]
        }

  @typedoc "Counters and settings of an agent, from `info/1`."
  @type info :: %{
          env_steps: non_neg_integer(),
          updates: non_neg_integer(),
          episodes: non_neg_integer(),
          epsilon: float(),
          replay_size: non_neg_integer(),
          obs_dim: pos_integer(),
          n_actions: pos_integer(),
          loss: float() | nil,
          q_mean: float() | nil,
          config: map()
        }

  @info_keys ~w(env_steps updates episodes epsilon replay_size obs_dim n_actions loss q_mean config)
  @config_keys ~w(env_id seed obs_dim n_actions hidden_sizes dueling double_dqn loss optimizer lr
                  max_grad_norm gamma n_step batch_size buffer_size learning_starts train_freq
                  gradient_steps target_update target_update_interval tau eps_schedule eps_start
                  eps_end eps_decay_steps eps_decay prioritized per_alpha per_beta per_beta_steps
                  per_eps)

  @doc """
  Starts an agent and the Python process that holds it.

  ## Options
    * `:config` - `DQNConfig` fields as a map or keyword list (default: all defaults)
    * `:load` - restore the agent from this checkpoint instead (`:config` is then ignored)
    * `:python` - the Python side: an interpreter path, a keyword list of
      `DQNBridge.Python.start_link/1` options, or a running `DQNBridge.Python`
      server to share (the agent links to it, but does not stop it)
    * `:name` - register the agent under this name

  A config Python refuses gives `{:error, %DQNBridge.PythonError{}}`; as with
  any GenServer whose `init/1` fails, the linked caller also gets an exit
  signal, so use `start/1` to try a config without linking.
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    {name, opts} = validate_start(opts)
    GenServer.start_link(__MODULE__, opts, name)
  end

  @doc "Like `start_link/1`, without a link to the caller."
  @spec start(keyword()) :: GenServer.on_start()
  def start(opts \\ []) do
    {name, opts} = validate_start(opts)
    GenServer.start(__MODULE__, opts, name)
  end

  defp validate_start(opts) do
    opts = Keyword.validate!(opts, [:name, :load, :python, config: []])
    {name, opts} = Keyword.pop(opts, :name)
    {if(name, do: [name: name], else: []), opts}
  end

  @doc """
  Picks an action for `obs` (epsilon-greedy, or greedy with `greedy: true`).

  A batch of observations gives a list of actions in one round trip.

  ## Options
    * `:greedy` - ignore epsilon (for evaluation); default `false`
    * `:timeout` - ms to wait
  """
  @spec select_action(t(), obs(), keyword()) :: actions() | error()
  def select_action(agent, obs, opts \\ []) do
    opts = Keyword.validate!(opts, greedy: false, timeout: @default_timeout)
    call(agent, :select_action, [obs, %{greedy: opts[:greedy]}], opts[:timeout])
  end

  @doc "Stores one transition (or a batch, one row per env slot) in the replay buffer."
  @spec observe(t(), transition(), timeout()) :: :ok | error()
  def observe(agent, transition, timeout \\ @default_timeout) when is_map(transition) do
    call(agent, :observe, [transition], timeout) |> nil_to_ok()
  end

  @doc """
  Runs the configured number of gradient steps now.

  Returns the loss and mean Q of the last update, or `:skipped` while the
  replay buffer holds too little data (`learning_starts`, `batch_size`).
  """
  @spec optimize(t(), timeout()) ::
          %{loss: float(), q_mean: float(), updates: non_neg_integer()} | :skipped | error()
  def optimize(agent, timeout \\ @default_timeout) do
    case call(agent, :optimize, [], timeout) do
      "skipped" -> :skipped
      %{} = metrics -> atomize(metrics, ~w(loss q_mean updates))
      error -> error
    end
  end

  @doc """
  The fused step: stores the transition that led to `obs`, trains when due, and
  returns the next action(s).

  `reward`, `terminated` and `truncated` are the outcome of the previous action
  (per row for a batch). The first call for an env slot only acts. For a slot
  whose episode just ended, `obs` is the first observation of its next episode
  and `final_obs:` carries the last observation of the one that ended (for a
  batch, a full batch whose other rows are ignored).

  ## Options
    * `:final_obs` - see above
    * `:timeout` - ms to wait
  """
  @spec step(t(), obs(), number() | [number()], boolean() | [boolean()], boolean() | [boolean()], keyword()) ::
          actions() | error()
  def step(agent, obs, reward, terminated, truncated, opts \\ []) do
    case opts do
      [] ->
        call(agent, :step, [obs, reward, terminated, truncated], @default_timeout)

      _ ->
        opts = Keyword.validate!(opts, [:final_obs, timeout: @default_timeout])
        args = [obs, reward, terminated, truncated] ++ List.wrap(opts[:final_obs] && [opts[:final_obs]])
        call(agent, :step, args, opts[:timeout])
    end
  end

  @doc "Writes a checkpoint (atomically) to `path`."
  @spec save(t(), Path.t(), timeout()) :: :ok | error()
  def save(agent, path, timeout \\ @default_timeout) do
    File.mkdir_p!(Path.dirname(Path.expand(path)))
    call(agent, :save, [Path.expand(path)], timeout) |> nil_to_ok()
  end

  @doc "Replaces the agent with the one saved in the checkpoint at `path`."
  @spec load(t(), Path.t(), timeout()) :: :ok | error()
  def load(agent, path, timeout \\ @default_timeout) do
    GenServer.call(agent, {:load, Path.expand(path), timeout}, :infinity)
  end

  @doc "Counters (env steps, updates, episodes, epsilon, replay size, last loss...) and the config."
  @spec info(t(), timeout()) :: info() | error()
  def info(agent, timeout \\ @default_timeout) do
    case call(agent, :info, [], timeout) do
      %{} = info ->
        info
        |> atomize(@info_keys)
        |> Map.update(:config, %{}, &atomize(&1, @config_keys))

      error ->
        error
    end
  end

  @doc "The `DQNBridge.Python` server the agent uses (to share it with `DQNBridge.Env.Gym`, say)."
  @spec python(t()) :: pid()
  def python(agent), do: GenServer.call(agent, :python)

  @doc "Frees the Python-side agent and stops the agent (and the Python process, if it owns it)."
  @spec stop(t(), timeout()) :: :ok
  def stop(agent, timeout \\ 10_000), do: GenServer.stop(agent, :normal, timeout)

  defp call(agent, function, args, timeout) do
    case GenServer.call(agent, {:api, function, args}, timeout) do
      {:ok, result} -> result
      {:error, _} = error -> error
    end
  catch
    :exit, {:timeout, {GenServer, :call, _}} -> {:error, :timeout}
    :exit, {{:shutdown, {:python_exited, status}}, {GenServer, :call, _}} -> {:error, {:python_exited, status}}
  end

  defp nil_to_ok(nil), do: :ok
  defp nil_to_ok({:error, _} = error), do: error

  defp atomize(map, known) do
    Map.new(map, fn {key, value} ->
      if key in known, do: {String.to_atom(key), value}, else: {key, value}
    end)
  end

  ## Server

  @impl true
  def init(opts) do
    with {:ok, python, owned?} <- start_python(opts[:python]),
         {:ok, handle} <- new_agent(python, opts) do
      {:ok, %{python: python, owned?: owned?, handle: handle}}
    else
      {:error, reason} -> {:stop, reason}
    end
  end

  # A shared server is linked too: if it dies, so does the agent (its handle died with it).
  defp start_python(server) when is_pid(server) do
    Process.link(server)
    {:ok, server, false}
  end

  defp start_python(opts) do
    opts =
      cond do
        is_nil(opts) -> []
        is_binary(opts) -> [executable: opts]
        is_list(opts) -> opts
      end

    with {:ok, pid} <- Python.start_link(opts), do: {:ok, pid, true}
  end

  defp new_agent(python, opts) do
    result =
      case opts[:load] do
        nil -> Python.call(python, :new_agent, [Map.new(opts[:config])], @start_timeout)
        path -> Python.call(python, :load, [Path.expand(path)], @start_timeout)
      end

    case result do
      {:ok, handle} ->
        {:ok, handle}

      error ->
        unless is_pid(opts[:python]), do: Python.stop(python)
        error
    end
  end

  @impl true
  def handle_call({:api, function, args}, from, state) do
    Python.forward(state.python, from, function, [state.handle | args])
    {:noreply, state}
  end

  def handle_call({:load, path, timeout}, _from, state) do
    case Python.call(state.python, :load, [path], timeout) do
      {:ok, handle} ->
        Python.call(state.python, :close, [state.handle], timeout)
        {:reply, :ok, %{state | handle: handle}}

      error ->
        {:reply, error, state}
    end
  end

  def handle_call(:python, _from, state), do: {:reply, state.python, state}

  @impl true
  def terminate(_reason, state) do
    if state.owned? do
      Python.stop(state.python)
    else
      Python.call(state.python, :close, [state.handle], 5_000)
    end
  catch
    :exit, _ -> :ok
  end
end
