defmodule DQNBridge.MixProject do
  use Mix.Project

  # The Elixir client lives under elixir_client/; the Python package under bridge/.
  # No Hex dependencies: only Elixir and OTP, so it builds offline.
  def project do
    [
      app: :dqn_bridge,
      version: "0.1.0",
      elixir: "~> 1.14",
      elixirc_paths: elixirc_paths(Mix.env()),
      test_paths: ["elixir_client/test"],
      test_pattern: "*_test.exs",
      start_permanent: Mix.env() == :prod,
      deps: []
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  defp elixirc_paths(:test), do: ["elixir_client/lib", "elixir_client/test/support"]
  defp elixirc_paths(_), do: ["elixir_client/lib"]
end
