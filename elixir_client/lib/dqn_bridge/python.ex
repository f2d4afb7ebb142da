defmodule DQNBridge.Python do
  @moduledoc """
  Owns one `python -m bridge serve` process and speaks the ErlPort wire protocol to it.

  The process is opened with `{:packet, 4}` and `:nouse_stdio`: frames travel on
  fds 3 and 4, so whatever Python, JAX or XLA print on stdout and stderr goes to
  the terminal and can never corrupt a frame.

  Calls are pipelined: `call/4` sends `{:C, id, module, function, args}` at once
  and the server remembers `id -> caller`, so many processes may have calls in
  flight on one port; Python answers them in arrival order. A caller that gives
  up (`{:error, :timeout}`) never receives the late reply: `GenServer.call/3`
  waits on an alias that is deactivated on timeout, so the reply is dropped.
  If Python exits, every waiting caller gets `{:error, {:python_exited, status}}`
  and the server stops with `{:shutdown, {:python_exited, status}}`; `status` is
  Python's exit status, or the port's exit reason (`:epipe`) when the port ended
  on a write to a Python that had just died, before any status came.
  When the server stops for any reason it closes the port (Python exits on end
  of input) and makes sure the OS process is gone.

      {:ok, py} = DQNBridge.Python.start_link()
      {:ok, [1, "two", :three]} = DQNBridge.Python.call(py, :ping, [[1, "two", :three]])
  """

  use GenServer

  alias DQNBridge.PythonError

  @default_timeout 30_000
  @project_root Path.expand("../../..", __DIR__)

  @typedoc "A running server: its pid or registered name."
  @type server :: GenServer.server()

  @typedoc "What a call can return."
  @type result ::
          {:ok, term()}
          | {:error, PythonError.t() | :timeout | {:python_exited, non_neg_integer() | atom()}}

  @doc """
  Starts the server and the Python process it owns.

  ## Options
    * `:executable` - the Python interpreter; default: the `DQN_BRIDGE_PYTHON`
      environment variable, else `.venv/bin/python` in the project root
    * `:args` - arguments after the interpreter (default `["-m", "bridge", "serve"]`)
    * `:cwd` - working directory of the Python process (default: the project root)
    * `:env` - extra environment variables, as `[{"NAME", "value"}]`
    * `:module` - the Python module called (default `:"bridge.api"`)
    * `:name` - register the server under this name
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    {name, opts} = opts |> validate_start() |> Keyword.pop(:name)
    GenServer.start_link(__MODULE__, opts, if(name, do: [name: name], else: []))
  end

  defp validate_start(opts) do
    Keyword.validate!(opts, [
      :name,
      executable: nil,
      args: ["-m", "bridge", "serve"],
      cwd: @project_root,
      env: [],
      module: :"bridge.api"
    ])
  end

  @doc """
  Calls `function(args...)` in the server's Python module and waits up to `timeout` ms.

  Returns `{:ok, result}`, `{:error, %DQNBridge.PythonError{}}` when Python raised,
  `{:error, :timeout}`, or `{:error, {:python_exited, status}}`.
  """
  @spec call(server(), atom(), list(), timeout()) :: result()
  def call(server, function, args, timeout \\ @default_timeout)
      when is_atom(function) and is_list(args) do
    call_or_error(server, {:call, function, args}, timeout)
  end

  @doc false
  # `GenServer.call/3` with the two exits a caller of a Python call expects turned into
  # results: a timeout, and a server that stopped because Python exited. Shared with
  # `DQNBridge.Agent`, whose calls end the same two ways.
  @spec call_or_error(GenServer.server(), term(), timeout()) :: term()
  def call_or_error(server, request, timeout) do
    GenServer.call(server, request, timeout)
  catch
    :exit, {:timeout, {GenServer, :call, _}} ->
      {:error, :timeout}

    :exit, {{:shutdown, {:python_exited, status}}, {GenServer, :call, _}} ->
      {:error, {:python_exited, status}}
  end

  @doc """
  Sends a call whose reply goes to `from` (a `GenServer.from()`), not to the sender.

  Lets a process that received a `GenServer.call/3` (such as `DQNBridge.Agent`)
  hand the request on without waiting for Python itself.
  """
  @spec forward(server(), GenServer.from(), atom(), list()) :: :ok
  def forward(server, from, function, args) when is_atom(function) and is_list(args) do
    GenServer.cast(server, {:call, from, function, args})
  end

  @doc "Like `start_link/1`, without a link to the caller."
  @spec start(keyword()) :: GenServer.on_start()
  def start(opts \\ []) do
    {name, opts} = opts |> validate_start() |> Keyword.pop(:name)
    GenServer.start(__MODULE__, opts, if(name, do: [name: name], else: []))
  end

  @doc "Stops the server; the Python process exits with it."
  @spec stop(server(), timeout()) :: :ok
  def stop(server, timeout \\ 5_000), do: GenServer.stop(server, :normal, timeout)

  @doc "The OS pid of the Python process."
  @spec os_pid(server()) :: non_neg_integer()
  def os_pid(server), do: GenServer.call(server, :os_pid)

  @doc "The project root: where `python -m bridge` resolves and runs."
  @spec project_root() :: Path.t()
  def project_root, do: @project_root

  @doc """
  The default Python interpreter: `DQN_BRIDGE_PYTHON` if set, else the
  project's `.venv/bin/python`.
  """
  @spec default_executable() :: Path.t()
  def default_executable do
    System.get_env("DQN_BRIDGE_PYTHON") || Path.join(@project_root, ".venv/bin/python")
  end

  ## Server

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    executable = opts[:executable] || default_executable()

    unless File.exists?(executable) do
      raise ArgumentError,
            "Python interpreter not found: #{executable} (run `make setup`, " <>
              "or pass :executable / set DQN_BRIDGE_PYTHON)"
    end

    port =
      Port.open({:spawn_executable, executable}, [
        {:packet, 4},
        :binary,
        :exit_status,
        :nouse_stdio,
        args: opts[:args],
        cd: opts[:cwd],
        env: Enum.map(opts[:env], fn {k, v} -> {to_charlist(k), to_charlist(v)} end)
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    {:ok, %{port: port, os_pid: os_pid, module: opts[:module], next_id: 0, pending: %{}}}
  end

  @impl true
  def handle_call({:call, function, args}, from, state),
    do: {:noreply, send_call(state, from, function, args)}

  def handle_call(:os_pid, _from, state), do: {:reply, state.os_pid, state}

  @impl true
  def handle_cast({:call, from, function, args}, state),
    do: {:noreply, send_call(state, from, function, args)}

  @impl true
  def handle_info({port, {:data, data}}, %{port: port} = state) do
    {id, reply} =
      case :erlang.binary_to_term(data) do
        {:r, id, result} -> {id, {:ok, result}}
        {:e, id, error} -> {id, {:error, PythonError.from_wire(error)}}
      end

    case Map.pop(state.pending, id) do
      {nil, _} ->
        {:noreply, state}

      {from, pending} ->
        GenServer.reply(from, reply)
        {:noreply, %{state | pending: pending}}
    end
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state),
    do: python_exited(state, status)

  # A write to a Python that has just died ends the port with :epipe, and then no
  # exit status ever comes: the port's exit reason stands in for it.
  def handle_info({:EXIT, port, reason}, %{port: port} = state), do: python_exited(state, reason)

  # The parent's exit is handled by GenServer itself (terminate/2 runs); other
  # links, such as agents sharing this server, may come and go.
  def handle_info({:EXIT, _port_or_pid, _reason}, state), do: {:noreply, state}
  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, %{port: nil}), do: :ok

  def terminate(_reason, %{port: port, os_pid: os_pid}) do
    # End of input tells the server to exit; if it is stuck, it is killed.
    try do
      Port.close(port)
    rescue
      ArgumentError -> :ok
    end

    unless wait_for_exit(os_pid, 40), do: System.cmd("kill", ["-KILL", "#{os_pid}"])
    :ok
  end

  defp python_exited(state, status) do
    for {_id, from} <- state.pending,
        do: GenServer.reply(from, {:error, {:python_exited, status}})

    {:stop, {:shutdown, {:python_exited, status}}, %{state | port: nil, pending: %{}}}
  end

  defp send_call(state, from, function, args) do
    id = state.next_id
    frame = :erlang.term_to_binary({:C, id, state.module, function, args}, minor_version: 1)

    # A closed port has its exit in our mailbox already: the call waits in
    # `pending` and is answered {:python_exited, _} with the others.
    try do
      Port.command(state.port, frame)
    rescue
      ArgumentError -> :closed
    end

    %{state | next_id: id + 1, pending: Map.put(state.pending, id, from)}
  end

  defp wait_for_exit(_os_pid, 0), do: false

  defp wait_for_exit(os_pid, tries) do
    if File.exists?("/proc/#{os_pid}") do
      Process.sleep(50)
      wait_for_exit(os_pid, tries - 1)
    else
      true
    end
  end
end
