defmodule DQNBridge.OSProcess do
  @moduledoc """
  OS processes seen through `/proc`, for the reliability tests: kill one, wait for
  one to go, find the `bridge serve` processes this test run started.

  A test run owns every `bridge serve` process below its BEAM in the process tree,
  plus the ones its tests `track/1` (those started by child BEAMs, which leave the
  tree when their BEAM is killed). `after_suite/1` fails the run if any of them
  is still alive once the suite is over.
  """

  @table __MODULE__

  @doc "Creates the table of tracked pids; call once, from test_helper.exs."
  def start_tracking do
    :ets.new(@table, [:named_table, :public, :set])
    :ok
  end

  @doc "Remembers `os_pid` as a `bridge serve` process of this test run."
  def track(os_pid) do
    :ets.insert(@table, {os_pid})
    os_pid
  end

  @doc "Sends SIGKILL to `os_pid`."
  def kill9(os_pid), do: signal(os_pid, "KILL")

  @doc ~S|Sends the signal named `name` ("KILL", "STOP", "CONT", ...) to `os_pid`.|
  def signal(os_pid, name) do
    {_, 0} = System.cmd("kill", ["-#{name}", to_string(os_pid)])
    :ok
  end

  @doc "True while `os_pid` runs (a zombie waiting to be reaped does not count)."
  def alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> stat_state(stat) != "Z"
      {:error, _} -> false
    end
  end

  @doc "Waits up to `ms` for `os_pid` to end; returns the ms it took, or `:timeout`."
  def wait_gone(os_pid, ms) do
    started = System.monotonic_time(:millisecond)
    deadline = started + ms

    Stream.repeatedly(fn ->
      now = System.monotonic_time(:millisecond)

      cond do
        not alive?(os_pid) -> {:gone, now - started}
        now > deadline -> :timeout
        true -> Process.sleep(10)
      end
    end)
    |> Enum.find(&(&1 != :ok))
    |> case do
      {:gone, took} -> took
      :timeout -> :timeout
    end
  end

  @doc "The `bridge serve` processes still alive that this test run started."
  def leftover_servers do
    tracked = for {pid} <- :ets.tab2list(@table), do: pid
    ours = descendants(String.to_integer(System.pid())) ++ tracked

    ours |> Enum.uniq() |> Enum.filter(&(alive?(&1) and bridge_serve?(&1)))
  end

  @doc """
  The after-suite check: waits up to 2 s for this run's `bridge serve` processes
  to end, then fails the run (exit status 1) if any is left.
  """
  def after_suite(_result) do
    case wait_for_no_leftovers(System.monotonic_time(:millisecond) + 2_000) do
      [] ->
        :ok

      left ->
        IO.puts(
          :stderr,
          "\n#{length(left)} `bridge serve` process(es) started by this test run " <>
            "are still running: #{Enum.map_join(left, ", ", &describe/1)}"
        )

        Enum.each(left, &System.cmd("kill", ["-KILL", to_string(&1)]))
        System.halt(1)
    end
  end

  defp wait_for_no_leftovers(deadline) do
    left = leftover_servers()

    if left == [] or System.monotonic_time(:millisecond) > deadline do
      left
    else
      Process.sleep(50)
      wait_for_no_leftovers(deadline)
    end
  end

  defp describe(os_pid), do: "#{os_pid} (#{cmdline(os_pid)})"

  defp bridge_serve?(os_pid), do: cmdline(os_pid) =~ "bridge serve"

  defp cmdline(os_pid) do
    case File.read("/proc/#{os_pid}/cmdline") do
      {:ok, raw} -> raw |> String.split(<<0>>, trim: true) |> Enum.join(" ")
      {:error, _} -> ""
    end
  end

  defp descendants(root) do
    children = Enum.group_by(all_pids(), &parent/1)
    below(root, children)
  end

  defp below(pid, children) do
    direct = Map.get(children, pid, [])
    direct ++ Enum.flat_map(direct, &below(&1, children))
  end

  defp all_pids do
    for name <- File.ls!("/proc"),
        match?({_, ""}, Integer.parse(name)),
        do: String.to_integer(name)
  end

  defp parent(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> stat |> after_comm() |> Enum.at(1) |> String.to_integer()
      {:error, _} -> nil
    end
  end

  defp stat_state(stat), do: stat |> after_comm() |> hd()

  # /proc/<pid>/stat is "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
  defp after_comm(stat),
    do: stat |> String.split(")") |> List.last() |> String.trim() |> String.split(" ")
end
