defmodule DQNBridge.Reliability.PortExitTest do
  # However the port learns that Python died, every waiting caller is answered and
  # the server stops. A write to a Python that has just died ends the port with
  # `:epipe` and no exit status at all.
  use ExUnit.Case, async: true

  alias DQNBridge.{Agent, OSProcess, Python}

  @moduletag :integration
  @moduletag :reliability
  @moduletag timeout: 300_000

  test "calls written to a Python that has just been SIGKILLed get {:error, {:python_exited, _}}, 30/30" do
    results =
      for _ <- 1..30 do
        {:ok, py} = Python.start()
        assert Python.call(py, :ping, [:up]) == {:ok, :up}
        ref = Process.monitor(py)
        OSProcess.kill9(OSProcess.track(Python.os_pid(py)))
        first = late_call(py)
        second = late_call(py)
        assert_receive {:DOWN, ^ref, :process, ^py, reason}, 5_000
        {first, second, reason}
      end

    # Never a timeout (a caller left waiting), never a crash of the server.
    for {first, second, reason} <- results do
      assert first in [:answered, :server_gone], inspect(results)
      assert second in [:answered, :server_gone], inspect(results)
      assert match?({:shutdown, {:python_exited, _}}, reason), inspect(results)
    end
  end

  defp late_call(py) do
    case Python.call(py, :ping, [:late], 3_000) do
      {:error, {:python_exited, _}} -> :answered
      other -> other
    end
  catch
    :exit, {:noproc, _} -> :server_gone
    :exit, {reason, _} -> {:exit, reason}
  end

  test "an agent with restart: whose call is written to a dead Python restarts and answers it" do
    {:ok, agent} =
      Agent.start_link(
        config: [seed: 0, obs_dim: 4, n_actions: 2, hidden_sizes: [16]],
        restart: true
      )

    for round <- 1..3 do
      assert Agent.select_action(agent, [0.0, 0.0, 0.0, 0.0]) in [0, 1]
      OSProcess.kill9(OSProcess.track(Agent.health(agent).os_pid))
      assert Agent.select_action(agent, [0.0, 0.0, 0.0, 0.0], timeout: 60_000) in [0, 1]
      assert %{restarts: ^round} = Agent.health(agent)
    end

    :ok = Agent.stop(agent)
  end
end
