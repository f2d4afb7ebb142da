defmodule DQNBridge.PythonStubTest do
  # The port owner against a stand-in server (test/support/stub_server.py) that can
  # be told to sleep, raise or exit, which the real server is not asked to do.
  use ExUnit.Case, async: true

  alias DQNBridge.{Python, PythonError}

  @stub Path.expand("../support/stub_server.py", __DIR__)

  setup do
    py = start_supervised!({Python, args: [@stub]}, restart: :temporary)
    %{py: py}
  end

  test "a call's result comes back", %{py: py} do
    term = %{"a" => [1, 2.5, :x, nil, true], b: {1, "two"}}
    assert Python.call(py, :echo, [term]) == {:ok, term}
  end

  test "pipelined calls from many callers each get their own reply", %{py: py} do
    tasks = for i <- 1..50, do: Task.async(fn -> Python.call(py, :echo, [i]) end)
    assert Task.await_many(tasks) == for(i <- 1..50, do: {:ok, i})
  end

  test "a Python exception comes back as a PythonError", %{py: py} do
    assert {:error, %PythonError{class: "builtins.ValueError", message: "bad call"} = error} =
             Python.call(py, :nope, [])

    assert Exception.message(error) =~ "builtins.ValueError: bad call"
  end

  test "a reply that arrives after the caller timed out is dropped", %{py: py} do
    assert Python.call(py, :sleep, [300, :late], 50) == {:error, :timeout}
    assert Python.call(py, :echo, [:next]) == {:ok, :next}
    refute_receive _, 100
  end

  test "Python's exit is answered to every waiting caller", %{py: py} do
    ref = Process.monitor(py)
    # answered in order: the sleep, then the exit, and the echo queued behind it never
    before = Task.async(fn -> Python.call(py, :sleep, [100, :answered]) end)
    Process.sleep(10)
    exiting = Task.async(fn -> Python.call(py, :exit, [3]) end)
    Process.sleep(10)
    assert Python.call(py, :echo, [:queued]) == {:error, {:python_exited, 3}}
    assert Task.await(before) == {:ok, :answered}
    assert Task.await(exiting) == {:error, {:python_exited, 3}}
    assert_receive {:DOWN, ^ref, :process, ^py, {:shutdown, {:python_exited, 3}}}
  end

  test "stopping the server ends the Python process", %{py: py} do
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
