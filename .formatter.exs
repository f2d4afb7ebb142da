[inputs: ["mix.exs", "elixir_client/{lib,test}/**/*.{ex,exs}"]]
