defmodule DQNBridge.PythonCase do
  @moduledoc """
  Helpers for tests against the real `python -m bridge serve`.

  A Python process takes seconds to import JAX, so a test module starts one
  server in `setup_all` (`start_supervised!(DQNBridge.Python)`) and its tests
  make agents in it; the server, and with it the OS process, stops when the
  module is done.
  """

  @doc "A small config that starts learning after a few steps."
  def quick_config(overrides \\ []) do
    Keyword.merge(
      [seed: 0, learning_starts: 32, batch_size: 16, buffer_size: 1_000, hidden_sizes: [16]],
      overrides
    )
  end

  @doc "True while the OS process `os_pid` exists."
  def os_alive?(os_pid), do: File.exists?("/proc/#{os_pid}")
end
