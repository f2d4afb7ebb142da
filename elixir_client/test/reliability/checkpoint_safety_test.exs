defmodule DQNBridge.Reliability.CheckpointSafetyTest do
  # A truncated, corrupt or foreign checkpoint is a clear error on the BEAM side:
  # `Agent.load/2` returns it and the agent goes on unchanged; `Agent.start/1`
  # returns it and leaves no Python process behind.
  use ExUnit.Case, async: true

  import DQNBridge.PythonCase, only: [quick_config: 0]

  alias DQNBridge.{Agent, Python, PythonError}

  @moduletag :integration
  @moduletag :reliability
  @moduletag :tmp_dir
  @moduletag timeout: 300_000

  setup_all do
    %{py: start_supervised!(Python)}
  end

  setup %{py: py, tmp_dir: dir} do
    agent = start_supervised!({Agent, python: py, config: quick_config()})
    for i <- 1..50, do: Agent.step(agent, [i / 50, 0.0, 0.0, 0.0], 1.0, false, false)
    good = Path.join(dir, "good.ckpt")
    :ok = Agent.save(agent, good)
    %{agent: agent, good: good, bytes: File.read!(good)}
  end

  test "a bad checkpoint is refused by Agent.load/2, and the agent goes on unchanged", context do
    %{agent: agent, tmp_dir: dir} = context
    before = Agent.info(agent)

    for {name, content, message} <- bad_files(context) do
      path = Path.join(dir, name)
      write(path, content)

      assert {:error, %PythonError{class: "builtins.ValueError", message: text}} =
               Agent.load(agent, path),
             "#{name} was not refused"

      assert text =~ message, "#{name}: #{text}"
      assert Agent.info(agent) == before
    end

    assert Agent.select_action(agent, [0.0, 0.0, 0.0, 0.0]) in [0, 1]
    assert Agent.load(agent, context.good) == :ok
  end

  test "a bad checkpoint makes Agent.start/1 return the error, with or without restart:",
       context do
    for {name, content, message} <- bad_files(context),
        name in ["half.ckpt", "flipped.ckpt", "missing.ckpt"],
        restart <- [false, true] do
      path = Path.join(context.tmp_dir, "start-#{restart}-#{name}")
      write(path, content)

      assert {:error, %PythonError{message: text}} =
               Agent.start(load: path, restart: restart, config: quick_config())

      assert text =~ message
    end

    # A corrupt autosave file is refused the same way when the agent resumes from it.
    autosave = Path.join(context.tmp_dir, "autosave.ckpt")
    File.write!(autosave, binary_part(context.bytes, 0, 100))

    assert {:error, %PythonError{message: text}} =
             Agent.start(
               config: quick_config(),
               restart: true,
               autosave: [path: autosave, every: 10]
             )

    assert text =~ "not a dqn_bridge checkpoint"
  end

  defp bad_files(%{bytes: bytes}) do
    size = byte_size(bytes)
    middle = div(size, 2)
    <<head::binary-size(middle), byte, tail::binary>> = bytes

    [
      {"half.ckpt", binary_part(bytes, 0, middle),
       "not a dqn_bridge checkpoint (truncated, or a foreign file)"},
      {"one-byte-short.ckpt", binary_part(bytes, 0, size - 1), "truncated"},
      {"flipped.ckpt", head <> <<Bitwise.bxor(byte, 0xFF)>> <> tail,
       ~r/corrupt \(checksum mismatch\)|not a dqn_bridge/},
      {"empty.ckpt", "", "not a dqn_bridge checkpoint"},
      {"text.ckpt", "{\"format\": \"dqn_bridge.checkpoint\"}\n", "not a dqn_bridge checkpoint"},
      {"random.ckpt", :crypto.strong_rand_bytes(4096), "not a dqn_bridge checkpoint"},
      {"version.ckpt", :binary.replace(bytes, "version" <> <<1>>, "version" <> <<9>>),
       "format version 9"},
      {"missing.ckpt", nil, "cannot read checkpoint"},
      {"a-directory", :directory, "cannot read checkpoint"}
    ]
  end

  defp write(_path, nil), do: :ok
  defp write(path, :directory), do: File.mkdir_p!(path)
  defp write(path, content), do: File.write!(path, content)
end
