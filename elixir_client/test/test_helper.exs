# Integration tests talk to the real `python -m bridge serve`; they are tagged
# (`@moduletag :integration`) so they can be selected or skipped, and run by default.
ExUnit.start(capture_log: true)
