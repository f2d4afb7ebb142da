defmodule Mix.Tasks.Dqn.TaskSupport do
  @moduledoc false
  # What the dqn.* tasks share: strict option parsing, --set values, agent and env
  # construction, and a small JSON writer (OTP 25 has no JSON module).

  alias DQNBridge.{Agent, Env, PythonError}

  @doc "OptionParser in strict mode; anything unknown, malformed or positional is a Mix.raise."
  def parse!(task, argv, switches, defaults) do
    {opts, args, invalid} = OptionParser.parse(argv, strict: switches)

    case {invalid, args} do
      {[], []} ->
        Keyword.merge(defaults, opts, fn
          :set, _default, _given -> Keyword.get_values(opts, :set)
          _key, _default, given -> given
        end)

      {[{switch, nil} | _], _} ->
        Mix.raise(
          "mix #{task}: unknown option #{switch}#{suggest(switch, switches)}\n\n#{usage(switches)}"
        )

      {[{switch, value} | _], _} ->
        Mix.raise(
          "mix #{task}: #{switch} expects #{type_of(switches, switch)}, got #{inspect(value)}\n\n#{usage(switches)}"
        )

      {[], [arg | _]} ->
        Mix.raise(
          "mix #{task}: unexpected argument #{inspect(arg)} (options start with --)\n\n#{usage(switches)}"
        )
    end
  end

  defp suggest(switch, switches) do
    names =
      Enum.map(switches, fn {key, _} -> "--" <> String.replace(Atom.to_string(key), "_", "-") end)

    best = Enum.max_by(names, &String.jaro_distance(&1, switch))
    if String.jaro_distance(best, switch) > 0.8, do: " (did you mean #{best}?)", else: ""
  end

  defp type_of(switches, switch) do
    key = switch |> String.trim_leading("-") |> String.replace("-", "_") |> String.to_atom()

    case switches[key] do
      :integer -> "an integer"
      :float -> "a number"
      _ -> "a value"
    end
  end

  defp usage(switches) do
    options =
      Enum.map_join(switches, " ", fn {key, type} ->
        name = "--" <> String.replace(Atom.to_string(key), "_", "-")

        case type do
          :boolean -> "[#{name}]"
          [_, :keep] -> "[#{name} KEY=VALUE]..."
          _ -> "[#{name} #{String.upcase(Atom.to_string(key))}]"
        end
      end)

    "options: #{options}"
  end

  @doc "Raises unless `value` is a positive integer."
  def positive!(task, name, value) do
    unless is_integer(value) and value > 0 do
      Mix.raise("mix #{task}: --#{name} must be a positive integer, got #{inspect(value)}")
    end

    value
  end

  @doc """
  `--set KEY=VALUE` pairs as a keyword list for `config:`. VALUE is read like
  `python -m bridge train --set`: JSON numbers, true/false/null, a [list], a
  "string", or else a bare word.
  """
  def config_overrides!(task, sets) do
    Enum.map(sets, fn text ->
      case String.split(text, "=", parts: 2) do
        [key, raw] when key != "" ->
          {String.to_atom(String.trim(key)), parse_value(String.trim(raw))}

        _ ->
          Mix.raise(
            "mix #{task}: --set expects KEY=VALUE (e.g. --set lr=0.0005), got #{inspect(text)}"
          )
      end
    end)
  end

  defp parse_value("true"), do: true
  defp parse_value("false"), do: false
  defp parse_value("null"), do: nil

  defp parse_value("[" <> rest = raw) do
    case String.trim_trailing(rest) do
      "]" ->
        []

      inner ->
        if String.ends_with?(inner, "]"),
          do:
            inner
            |> String.trim_trailing("]")
            |> String.split(",")
            |> Enum.map(&parse_value(String.trim(&1))),
          else: raw
    end
  end

  defp parse_value("\"" <> rest = raw) do
    if String.ends_with?(rest, "\""), do: String.trim_trailing(rest, "\""), else: raw
  end

  defp parse_value(raw) do
    case Integer.parse(raw) do
      {int, ""} ->
        int

      _ ->
        case Float.parse(raw) do
          {float, ""} -> float
          _ -> raw
        end
    end
  end

  @doc "Starts an agent (unlinked, so a refused config is a Mix.raise, not a crash)."
  def start_agent!(task, opts) do
    case Agent.start(opts) do
      {:ok, agent} ->
        agent

      {:error, %PythonError{class: class, message: message}} ->
        Mix.raise("mix #{task}: #{short_class(class)}: #{message}")

      {:error, reason} ->
        Mix.raise("mix #{task}: could not start the Python agent: #{inspect(reason)}")
    end
  end

  defp short_class(class), do: class |> String.split(".") |> List.last()

  @doc "The pure-Elixir CartPole for CartPole-v1 (unless `gym?`), else a gymnasium env through the port."
  def make_env!(task, env_id, agent, gym?) do
    if env_id == "CartPole-v1" and not gym? do
      Env.CartPole.new()
    else
      try do
        Env.Gym.new(env_id, python: Agent.python(agent))
      rescue
        error in PythonError -> Mix.raise("mix #{task}: --env #{env_id}: #{error.message}")
      end
    end
  end

  @doc """
  With `split?`, runs `fun.(server_args)` with a CPU kept for the Python server's main thread: the last
  CPU this BEAM may use goes to it (`server_args` are `bridge serve`'s arguments, with
  `--main-cpu`), and every thread of this BEAM moves to the others until `fun` returns.

  In a one-env loop the BEAM and Python take turns, and on a small machine a thread that
  one of them wakes tends to land on the other's CPU and preempt it. With the split, the
  Elixir-driven CartPole loop on 2 vCPUs ran ~15% faster (README, "Speed"). Without
  `split?`, or where it cannot be done (one CPU, no `taskset`, no /proc), `fun` gets the
  default arguments.
  """
  def with_python_cpu(split?, fun) do
    default = ["-m", "bridge", "serve"]
    pid = System.pid()

    with true <- split?,
         taskset when taskset != nil <- System.find_executable("taskset"),
         {out, 0} <- System.cmd(taskset, ["-c", "-p", pid], stderr_to_stdout: true),
         [_, list] <- Regex.run(~r/list:\s*(\S+)/, out),
         cpus when length(cpus) > 1 <- parse_cpu_list(list),
         {python_cpu, beam_cpus} = List.pop_at(cpus, -1),
         {_, 0} <- taskset_all(taskset, Enum.join(beam_cpus, ","), pid) do
      try do
        fun.(default ++ ["--main-cpu", Integer.to_string(python_cpu)])
      after
        taskset_all(taskset, list, pid)
      end
    else
      _ -> fun.(default)
    end
  end

  defp taskset_all(taskset, list, pid),
    do: System.cmd(taskset, ["-a", "-c", "-p", list, pid], stderr_to_stdout: true)

  @doc false
  # "0-2,5" -> [0, 1, 2, 5]
  def parse_cpu_list(list) do
    list
    |> String.split(",", trim: true)
    |> Enum.flat_map(fn part ->
      case String.split(part, "-") do
        [a] -> [String.to_integer(a)]
        [a, b] -> Enum.to_list(String.to_integer(a)..String.to_integer(b))
      end
    end)
  end

  @doc """
  `DQNBridge.Python` start options for `bridge serve` run with `server_args` by `python`
  (from `python_opt/1`; nil: the default interpreter).
  """
  def server_opts(nil, server_args), do: [args: server_args]
  def server_opts(python, server_args), do: [args: server_args, executable: python]

  @doc "The `--python` option as Agent's `python:` (nil: the default interpreter)."
  def python_opt(nil), do: nil

  def python_opt(path) do
    unless File.exists?(path), do: Mix.raise("--python #{path}: no such file")
    Path.expand(path)
  end

  @doc "Runs `python -m bridge plot` on a metrics CSV; returns the PNG path."
  def plot!(python, csv, png) do
    python = python || DQNBridge.Python.default_executable()
    args = ["-m", "bridge", "plot", Path.expand(csv), "-o", Path.expand(png)]

    case System.cmd(python, args, cd: DQNBridge.Python.project_root(), stderr_to_stdout: true) do
      {_, 0} -> png
      {out, status} -> Mix.raise("python -m bridge plot failed (exit #{status}):\n#{out}")
    end
  end

  @doc "Encodes maps, lists, strings, numbers, booleans and nil as pretty JSON."
  def json(term), do: IO.iodata_to_binary([encode(term, ""), ?\n])

  defp encode(nil, _), do: "null"
  defp encode(true, _), do: "true"
  defp encode(false, _), do: "false"
  defp encode(n, _) when is_integer(n), do: Integer.to_string(n)
  defp encode(x, _) when is_float(x), do: Float.to_string(x)
  defp encode(a, indent) when is_atom(a), do: encode(Atom.to_string(a), indent)
  defp encode(s, _) when is_binary(s), do: [?", escape(s), ?"]
  defp encode([], _), do: "[]"

  defp encode(list, indent) when is_list(list) do
    if Enum.all?(list, &(is_number(&1) or is_binary(&1) or is_atom(&1))) do
      ["[", Enum.map_intersperse(list, ", ", &encode(&1, indent)), "]"]
    else
      inner = indent <> "  "
      ["[\n", Enum.map_intersperse(list, ",\n", &[inner, encode(&1, inner)]), ?\n, indent, "]"]
    end
  end

  defp encode(map, indent) when is_map(map) do
    inner = indent <> "  "

    pairs =
      map
      |> Enum.sort_by(fn {k, _} -> to_string(k) end)
      |> Enum.map_intersperse(",\n", fn {k, v} ->
        [inner, encode(to_string(k), inner), ": ", encode(v, inner)]
      end)

    ["{\n", pairs, ?\n, indent, "}"]
  end

  defp escape(s) do
    for <<c <- s>>, into: "" do
      case c do
        ?" -> "\\\""
        ?\\ -> "\\\\"
        ?\n -> "\\n"
        c when c < 0x20 -> "\\u" <> String.pad_leading(Integer.to_string(c, 16), 4, "0")
        c -> <<c>>
      end
    end
  end

  @doc "Mean of a non-empty list of numbers."
  def mean(xs), do: Enum.sum(xs) / length(xs)

  @doc "Population standard deviation."
  def std(xs) do
    m = mean(xs)
    :math.sqrt(Enum.sum(Enum.map(xs, &((&1 - m) * (&1 - m)))) / length(xs))
  end
end
