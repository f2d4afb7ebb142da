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

  ## Restarts and autosave

  For an agent that must outlive its Python process, start it with `restart: true`
  and `autosave: [path: path, every: n]`, for example in your supervision tree:

      children = [
        {DQNBridge.Agent,
         name: MyApp.Agent, config: [seed: 0], restart: true,
         autosave: [path: "/var/lib/my_app/agent.ckpt", every: 1_000]}
      ]

  * Autosave writes a checkpoint (atomically: temporary file, fsync, rename) to
    `path` each time the env steps seen through `step/6` and `observe/3` cross a
    multiple of `n`, and once more when the agent stops normally. A crash loses at
    most the last `n` env steps. If `path` exists when the agent starts (and no
    `:load` is given), the agent resumes from it.
  * With `restart:`, the agent traps exits and, when its Python process dies
    (killed, crashed, out of memory), starts a new one in place and loads the
    latest checkpoint: the last one this agent saved or loaded, else the `:load`
    file, else a fresh agent from `:config`. The agent's pid stays the same.
  * Calls in flight when Python died are sent again, in order, once the new
    process is up; calls made during the restart wait in the agent's mailbox. So
    a `DQNBridge.Loop` (or your own loop) just sees one slow call. A call that
    was in flight during two crashes in a row is answered
    `{:error, {:python_exited, status}}` instead, in case it is what kills Python.
  * More than `max_restarts` restarts within `max_seconds` (default 5 in 10 s),
    or a checkpoint that cannot be loaded, stops the agent with
    `{:restart_failed, reason}`; its own supervisor takes over from there.

  With `restart:`, replies come back through the agent (one extra message hop),
  so that it knows which calls were in flight. Gym envs made in the agent's
  Python process (`python/1`) die with it; restart covers the agent only.
  `health/1` reports the restarts.

  What a restart loses: the env steps since the last autosave (their transitions,
  updates and counters), and the transition of the step in progress: after the
  reload the agent calls `begin_episodes/2`, so the first `step/6` only acts and no
  transition joins the checkpoint's last observation to the current one. A restart
  takes as long as starting Python and compiling the agent again, a few seconds;
  JAX's persistent compilation cache brings it to about one:
  `python: [env: [{"JAX_COMPILATION_CACHE_DIR", dir}, {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"}]]`.
  """

  use GenServer

  require Logger

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
          {:error, PythonError.t() | :timeout | {:python_exited, non_neg_integer() | atom()}}

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
    * `:restart` - restart a dead Python process and reload the latest checkpoint:
      `false` (default), `true`, or `[max_restarts: n, max_seconds: s]` (default 5
      restarts in 10 s); needs a Python process of its own, not a shared `:python` server
    * `:autosave` - `[path: path, every: n]`: save a checkpoint to `path` every `n`
      env steps, and when the agent stops normally

  See "Restarts and autosave" above. A config Python refuses gives `{:error, %DQNBridge.PythonError{}}`; as with
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
    opts =
      Keyword.validate!(opts, [:name, :load, :python, config: [], restart: false, autosave: nil])

    opts =
      opts
      |> Keyword.update!(:restart, &restart_limits!/1)
      |> Keyword.update!(:autosave, &autosave!/1)

    if opts[:restart] && is_pid(opts[:python]) do
      raise ArgumentError,
            "restart: needs an agent that owns its Python process; drop restart: or python: (a shared server)"
    end

    {name, opts} = Keyword.pop(opts, :name)
    {if(name, do: [name: name], else: []), opts}
  end

  defp restart_limits!(false), do: nil
  defp restart_limits!(true), do: restart_limits!([])

  defp restart_limits!(opts) when is_list(opts) do
    opts = Keyword.validate!(opts, max_restarts: 5, max_seconds: 10)

    case {opts[:max_restarts], opts[:max_seconds]} do
      {max, seconds} when is_integer(max) and max >= 0 and is_number(seconds) and seconds > 0 ->
        %{max: max, window_ms: round(seconds * 1000)}

      _ ->
        raise ArgumentError,
              "restart: needs max_restarts: a non-negative integer and max_seconds: a positive number, " <>
                "got: #{inspect(opts)}"
    end
  end

  defp restart_limits!(other),
    do:
      raise(
        ArgumentError,
        "restart: must be true, false or [max_restarts: n, max_seconds: s], got: #{inspect(other)}"
      )

  defp autosave!(nil), do: nil

  defp autosave!(opts) when is_list(opts) do
    opts = Keyword.validate!(opts, [:path, :every])

    case {opts[:path], opts[:every]} do
      {path, every} when is_binary(path) and is_integer(every) and every > 0 ->
        File.mkdir_p!(Path.dirname(Path.expand(path)))
        %{path: Path.expand(path), every: every}

      _ ->
        raise ArgumentError,
              "autosave: needs [path: a file path, every: a positive integer of env steps], " <>
                "got: #{inspect(opts)}"
    end
  end

  defp autosave!(other),
    do: raise(ArgumentError, "autosave: must be [path: path, every: n], got: #{inspect(other)}")

  @doc """
  Picks an action for `obs` (epsilon-greedy, or greedy with `greedy: true`).

  A batch of observations gives a list of actions in one round trip.

  ## Options
    * `:greedy` - ignore epsilon (for evaluation); default `false`
    * `:timeout` - ms to wait
  """
  @spec select_action(t(), obs(), keyword()) :: actions() | error()
  def select_action(agent, obs, opts \\ [])

  # The control-loop case, kept lean: no options to check, none to send.
  def select_action(agent, obs, []), do: call(agent, :select_action, [obs], @default_timeout)

  def select_action(agent, obs, opts) do
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

  The action comes from the params as they were when the previous step began
  (one training round behind), and Python replies before it runs the round
  that is due: the round computes while you step your env(s). A
  round that fails is reported by the agent's next `step/6`, `optimize/2` or
  `save/3`, which then changes nothing.

  ## Options
    * `:final_obs` - see above
    * `:timeout` - ms to wait
  """
  @spec step(
          t(),
          obs(),
          number() | [number()],
          boolean() | [boolean()],
          boolean() | [boolean()],
          keyword()
        ) ::
          actions() | error()
  def step(agent, obs, reward, terminated, truncated, opts \\ []) do
    case opts do
      [] ->
        call(agent, :step, [obs, reward, terminated, truncated], @default_timeout)

      _ ->
        opts = Keyword.validate!(opts, [:final_obs, timeout: @default_timeout])

        args =
          [obs, reward, terminated, truncated] ++
            List.wrap(opts[:final_obs] && [opts[:final_obs]])

        call(agent, :step, args, opts[:timeout])
    end
  end

  @doc """
  Forgets each env slot's last observation and pending n-step steps, so the next
  `step/6` of every slot only acts. `DQNBridge.Loop.run/2` calls it before its first
  step; call it yourself after resetting envs mid-episode.
  """
  @spec begin_episodes(t(), timeout()) :: :ok | error()
  def begin_episodes(agent, timeout \\ @default_timeout) do
    call(agent, :begin_episodes, [], timeout) |> nil_to_ok()
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

  @typedoc "What `health/1` reports."
  @type health :: %{
          restarts: non_neg_integer(),
          last_exit: term(),
          os_pid: non_neg_integer() | nil,
          checkpoint: Path.t() | nil
        }

  @doc """
  How the agent's Python process is doing: restarts so far, the exit reason of
  the last Python process that died (`nil` if none), the OS pid of the current
  one, and the checkpoint a restart would load (`nil`: a fresh agent from the config).
  """
  @spec health(t()) :: health()
  def health(agent), do: GenServer.call(agent, :health)

  @doc "Frees the Python-side agent and stops the agent (and the Python process, if it owns it)."
  @spec stop(t(), timeout()) :: :ok
  def stop(agent, timeout \\ 10_000), do: GenServer.stop(agent, :normal, timeout)

  defp call(agent, function, args, timeout) do
    case Python.call_or_error(agent, {:api, function, args}, timeout) do
      {:ok, result} -> result
      {:error, _} = error -> error
    end
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
    # Trapping exits lets a restart replace Python, and a supervisor's shutdown run the final autosave.
    if opts[:restart] || opts[:autosave], do: Process.flag(:trap_exit, true)
    restore = initial_restore(opts)

    with {:ok, python, owned?} <- start_python(opts[:python]),
         {:ok, handle} <- restore_agent(python, restore, owned?) do
      {:ok,
       %{
         python: python,
         owned?: owned?,
         handle: handle,
         python_opts: opts[:python],
         restore: restore,
         restart: opts[:restart],
         autosave: opts[:autosave],
         steps: 0,
         pending: %{},
         next_seq: 0,
         restarts: 0,
         restart_times: [],
         last_exit: nil
       }}
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

  # Where a (re)started Python process gets its agent: the latest checkpoint, else the config.
  defp initial_restore(opts) do
    cond do
      opts[:load] -> {:load, Path.expand(opts[:load])}
      opts[:autosave] && File.exists?(opts[:autosave].path) -> {:load, opts[:autosave].path}
      true -> {:new, Map.new(opts[:config])}
    end
  end

  defp restore_agent(python, restore, owned?) do
    result =
      case restore do
        {:new, config} -> Python.call(python, :new_agent, [config], @start_timeout)
        {:load, path} -> Python.call(python, :load, [path], @start_timeout)
      end

    case result do
      {:ok, handle} ->
        {:ok, handle}

      error ->
        if owned?, do: stop_python(python)
        error
    end
  end

  defp stop_python(python) do
    Python.stop(python)
  catch
    :exit, _already_gone -> :ok
  end

  @impl true
  def handle_call({:api, function, args}, from, %{restart: nil} = state) do
    Python.forward(state.python, from, function, [state.handle | args])
    {:noreply, count_steps(state, function, args)}
  end

  def handle_call({:api, function, args}, from, state) do
    state = send_call(state, {:caller, from}, function, args, 1)
    {:noreply, count_steps(state, function, args)}
  end

  def handle_call({:load, path, timeout}, _from, state) do
    case Python.call(state.python, :load, [path], timeout) do
      {:ok, handle} ->
        Python.call(state.python, :close, [state.handle], timeout)
        {:reply, :ok, %{state | handle: handle, restore: {:load, path}}}

      error ->
        {:reply, error, state}
    end
  end

  def handle_call(:health, _from, state) do
    os_pid =
      try do
        Python.os_pid(state.python)
      catch
        :exit, _dead_before_restart -> nil
      end

    checkpoint = with {:load, path} <- state.restore, do: path, else: (_ -> nil)

    {:reply,
     %{
       restarts: state.restarts,
       last_exit: state.last_exit,
       os_pid: os_pid,
       checkpoint: checkpoint
     }, state}
  end

  def handle_call(:python, _from, state), do: {:reply, state.python, state}

  @impl true
  def handle_info({{__MODULE__, seq}, reply}, %{pending: pending, restart: restart} = state)
      when is_map_key(pending, seq) do
    case reply do
      # Python died: the call stays pending and is sent again once the restart is done.
      {:error, {:python_exited, _}} when restart != nil ->
        {:noreply, state}

      _ ->
        {{origin, function, args, _attempt}, pending} = Map.pop(pending, seq)
        {:noreply, delivered(%{state | pending: pending}, origin, function, args, reply)}
    end
  end

  def handle_info({:EXIT, python, reason}, %{python: python, restart: nil} = state),
    do: {:stop, reason, state}

  def handle_info({:EXIT, python, reason}, %{python: python} = state), do: restart(state, reason)
  # An earlier Python process (or one a failed restore gave up on) reporting its end.
  def handle_info({:EXIT, _pid, _reason}, state), do: {:noreply, state}
  def handle_info(_stray, state), do: {:noreply, state}

  defp restart(state, reason) do
    now = System.monotonic_time(:millisecond)
    recent = [now | Enum.filter(state.restart_times, &(now - &1 < state.restart.window_ms))]
    state = %{state | last_exit: reason, restart_times: recent}

    with :ok <- check_restart_rate(recent, state.restart, reason),
         Logger.warning(
           "DQNBridge.Agent: Python exited (#{inspect(reason)}); restarting from #{describe(state.restore)}"
         ),
         {:ok, python, true} <- start_python(state.python_opts),
         {:ok, handle} <- restore_agent(python, state.restore, true),
         # The envs moved on since the checkpoint: no transition may join its last
         # observation to the next one.
         {:ok, nil} <- Python.call(python, :begin_episodes, [handle], @start_timeout) do
      {:noreply,
       resend_pending(%{state | python: python, handle: handle, restarts: state.restarts + 1})}
    else
      {:error, error} -> {:stop, {:restart_failed, error}, state}
    end
  end

  defp check_restart_rate(recent, limits, reason) do
    if length(recent) <= limits.max,
      do: :ok,
      else: {:error, {:too_many_restarts, limits.max, limits.window_ms, reason}}
  end

  defp describe({:load, path}), do: path
  defp describe({:new, _config}), do: "the config (no checkpoint yet)"

  # In the order Python first got them. A call in flight during two crashes in a row
  # may be what kills Python: it gets an error instead of a third try.
  defp resend_pending(state) do
    state.pending
    |> Enum.sort()
    |> Enum.reduce(%{state | pending: %{}}, fn {_seq, {origin, function, args, attempt}}, state ->
      if attempt < 2,
        do: send_call(state, origin, function, args, attempt + 1),
        else:
          delivered(
            state,
            origin,
            function,
            args,
            {:error, {:python_exited, exit_status(state.last_exit)}}
          )
    end)
  end

  defp exit_status({:shutdown, {:python_exited, status}}), do: status
  defp exit_status(reason), do: reason

  # The reply comes back to the agent as `{{DQNBridge.Agent, seq}, reply}`.
  defp send_call(state, origin, function, args, attempt) do
    seq = state.next_seq
    Python.forward(state.python, {self(), {__MODULE__, seq}}, function, [state.handle | args])

    %{
      state
      | next_seq: seq + 1,
        pending: Map.put(state.pending, seq, {origin, function, args, attempt})
    }
  end

  defp delivered(state, {:caller, from}, function, args, reply) do
    GenServer.reply(from, reply)

    if function == :save and match?({:ok, _}, reply),
      do: %{state | restore: {:load, hd(args)}},
      else: state
  end

  defp delivered(state, :autosave, :save, [path], reply) do
    case reply do
      {:ok, _} ->
        %{state | restore: {:load, path}}

      {:error, error} ->
        Logger.error("DQNBridge.Agent: autosave to #{path} failed: #{inspect(error)}")
        state
    end
  end

  # Autosave counts env steps: the rows of the observations given to step and observe.
  defp count_steps(%{autosave: nil} = state, _function, _args), do: state

  defp count_steps(state, function, args) do
    rows =
      case {function, args} do
        {:step, [obs | _]} -> rows(obs)
        {:observe, [transition]} -> rows(Map.get(transition, :obs, Map.get(transition, "obs")))
        _ -> 0
      end

    %{path: path, every: every} = state.autosave
    steps = state.steps + rows
    state = %{state | steps: steps}
    due? = div(steps, every) > div(steps - rows, every)

    if due? and not autosaving?(state),
      do: send_call(state, :autosave, :save, [path], 1),
      else: state
  end

  defp rows([first | _] = batch) when is_list(first), do: length(batch)
  defp rows({:tensor, _dtype, {n, _dim}, _data}), do: n
  defp rows(_one), do: 1

  defp autosaving?(state), do: Enum.any?(state.pending, &match?({_seq, {:autosave, _, _, _}}, &1))

  @impl true
  def terminate(_reason, state) do
    if state.autosave, do: final_save(state)

    if state.owned? do
      stop_python(state.python)
    else
      Python.call(state.python, :close, [state.handle], 5_000)
    end
  catch
    :exit, _ -> :ok
  end

  defp final_save(state) do
    case Python.call(state.python, :save, [state.handle, state.autosave.path], 5_000) do
      {:ok, _} ->
        :ok

      {:error, error} ->
        Logger.error(
          "DQNBridge.Agent: final autosave to #{state.autosave.path} failed: #{inspect(error)}"
        )
    end
  catch
    :exit, _python_gone -> :ok
  end
end
