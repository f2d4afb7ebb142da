defmodule DQNBridge.PythonTest do
  # The port owner against the real `python -m bridge serve`: replies, pipelining,
  # errors, late replies and exits. Where a test needs the server to be slow or to die,
  # it stops (SIGSTOP) or kills (SIGKILL) the real process.
  use ExUnit.Case, async: true

  alias DQNBridge.{OSProcess, Python, PythonError}

  @moduletag :integration

  setup_all do
    %{py: start_supervised!(Python)}
  end

  test "a call's result comes back", %{py: py} do
    term = %{"a" => [1, 2.5, :x, nil, true], b: {1, "two"}}
    assert Python.call(py, :ping, [term]) == {:ok, term}
  end

  test "pipelined calls from many callers each get their own reply", %{py: py} do
    tasks = for i <- 1..50, do: Task.async(fn -> Python.call(py, :ping, [i]) end)
    assert Task.await_many(tasks) == for(i <- 1..50, do: {:ok, i})
  end

  test "a Python exception comes back as a PythonError", %{py: py} do
    assert {:error, %PythonError{class: "builtins.ValueError", message: message} = error} =
             Python.call(py, :info, [{:agent, 999_999}])

    assert message =~ "999999"
    assert Exception.message(error) =~ "builtins.ValueError: "

    assert {:error, %PythonError{class: "bridge.protocol.CallError", message: message}} =
             Python.call(py, :nope, [])

    assert message =~ "bridge.api.nope is not an allowed function"
    assert Python.call(py, :ping, [:still_serving]) == {:ok, :still_serving}
  end

  test "a reply that arrives after the caller timed out is dropped", %{py: py} do
    os_pid = Python.os_pid(py)
    OSProcess.signal(os_pid, "STOP")

    try do
      assert Python.call(py, :ping, [:late], 50) == {:error, :timeout}
    after
      OSProcess.signal(os_pid, "CONT")
    end

    # Python answers in order: the late reply has come back before this one.
    assert Python.call(py, :ping, [:next]) == {:ok, :next}
    refute_receive _, 100
  end

  test "Python's exit is answered to every waiting caller" do
    py = start_supervised!({Python, []}, restart: :temporary, id: :dying)
    ref = Process.monitor(py)
    os_pid = Python.os_pid(py)
    assert Python.call(py, :ping, [:answered]) == {:ok, :answered}

    # Stopped, Python cannot answer the calls waiting when it is killed.
    OSProcess.signal(os_pid, "STOP")
    waiting = for i <- 1..3, do: Task.async(fn -> Python.call(py, :ping, [i]) end)
    Process.sleep(50)
    OSProcess.kill9(os_pid)

    assert Task.await_many(waiting) == List.duplicate({:error, {:python_exited, 137}}, 3)
    assert_receive {:DOWN, ^ref, :process, ^py, {:shutdown, {:python_exited, 137}}}, 5_000
  end

  test "stopping the server ends the Python process" do
    py = start_supervised!({Python, []}, restart: :temporary, id: :stopping)
    os_pid = Python.os_pid(py)
    assert File.exists?("/proc/#{os_pid}")
    :ok = Python.stop(py)
    refute File.exists?("/proc/#{os_pid}")
  end

  test "a missing interpreter is a clear error" do
    Process.flag(:trap_exit, true)

    assert {:error, {%ArgumentError{message: message}, _}} =
             Python.start_link(executable: "/nonexistent/python")

    assert message =~ "Python interpreter not found: /nonexistent/python"
  end
end
