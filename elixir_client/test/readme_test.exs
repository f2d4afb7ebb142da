defmodule DQNBridge.ReadmeTest do
  # The README's Elixir examples run as written (with a shorter run and a temp folder).
  use ExUnit.Case, async: true

  @moduletag :integration
  @moduletag timeout: 180_000
  @readme Path.expand("../../README.md", __DIR__)

  defp elixir_block(after_heading) do
    text = File.read!(@readme)
    [_, rest] = String.split(text, after_heading, parts: 2)
    [_, code] = Regex.run(~r/```elixir\n(.*?)\n```/s, rest)
    code
  end

  @tag :tmp_dir
  test "the Elixir API quick start runs and trains", %{tmp_dir: dir} do
    code =
      elixir_block("### 2. Elixir API")
      |> String.replace("runs/mine", dir)
      |> String.replace("steps: 20_000", "steps: 3_000")

    {state, _binding} =
      ExUnit.CaptureIO.with_io(fn -> Code.eval_string(code <> "\n{state, agent}") end)
      |> elem(0)
      |> then(fn {{state, agent}, binding} ->
        assert %{env_steps: steps} = DQNBridge.Agent.info(agent)
        assert steps >= 1_000
        DQNBridge.Agent.stop(agent)
        {state, binding}
      end)

    assert state.step >= 1_000
    assert File.exists?(Path.join(dir, "best.ckpt"))
    assert File.read!(Path.join(dir, "metrics.csv")) =~ "step,episode,episode_return"
  end

  test "the raw protocol example gets a result and a named error" do
    code = elixir_block("### 4. The raw protocol")
    {_, binding} = Code.eval_string(code)
    assert is_integer(binding[:action])
    assert binding[:msg] =~ "obs has shape [1]; expected [4] or [n_envs, 4]"
    Port.close(binding[:port])
  end
end
