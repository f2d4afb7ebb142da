defmodule DQNBridge.PythonError do
  @moduledoc """
  An exception raised on the Python side of the bridge, as the port reported it.

  Agent and Python calls return it as `{:error, %DQNBridge.PythonError{}}`; it is
  also an exception, so `raise error` shows the Python class, message and
  traceback.
  """

  defexception [:class, :message, traceback: []]

  @typedoc "`class` is the Python exception's qualified name, e.g. `\"builtins.ValueError\"`."
  @type t :: %__MODULE__{class: String.t(), message: String.t(), traceback: [String.t()]}

  @doc false
  @spec from_wire(term()) :: t()
  def from_wire({:python, class, message, traceback}) do
    %__MODULE__{
      class: to_text(class),
      message: to_text(message),
      traceback: Enum.map(List.wrap(traceback), &to_text/1)
    }
  end

  def from_wire(other), do: %__MODULE__{class: "unknown", message: inspect(other)}

  @impl true
  def message(%__MODULE__{class: class, message: message, traceback: []}),
    do: "#{class}: #{message}"

  def message(%__MODULE__{class: class, message: message, traceback: traceback}),
    do: "#{class}: #{message}\n" <> Enum.join(traceback, "")

  defp to_text(atom) when is_atom(atom), do: Atom.to_string(atom)
  defp to_text(binary) when is_binary(binary), do: binary
  defp to_text(list) when is_list(list), do: List.to_string(list)
  defp to_text(other), do: inspect(other)
end
