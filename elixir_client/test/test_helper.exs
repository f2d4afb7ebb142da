# Integration tests talk to the real `python -m bridge serve`; they are tagged
# (`@moduletag :integration`) so they can be selected or skipped, and run by default.
ExUnit.start(capture_log: true)

# No `bridge serve` process started by this run may outlive it: checked after the
# suite (the run fails if one is left); see DQNBridge.OSProcess.
DQNBridge.OSProcess.start_tracking()
ExUnit.after_suite(&DQNBridge.OSProcess.after_suite/1)
