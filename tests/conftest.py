"""Shared fixtures: `PortClient`, a small Python stand-in for the BEAM side of the port.

It spawns the real `python -m bridge serve` over real pipes (fds 3/4 as a port opened
with :nouse_stdio arranges, or stdin/stdout with use_stdio=True), frames and encodes
calls, and returns decoded replies. Other test files may use it:

    with PortClient() as port:
        assert port.call("ping", [1, 2]) == [1, 2]
"""
from __future__ import annotations

import itertools
import os
import select
import struct
import subprocess
import sys
import tempfile
import time

import pytest

from bridge.protocol import Atom, decode, encode, frame
from bridge.wirebench import spawn_on_fds_3_4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RemoteError(Exception):
    """An `{:e, id, {:python, class, message, traceback}}` reply."""

    def __init__(self, cls: str, message: str, traceback: list):
        super().__init__(f"{cls}: {message}")
        self.cls = cls
        self.message = message
        self.traceback = traceback


class PortClient:
    """Owns one `python -m bridge serve` process and talks packet-4 ETF to it.

    Args:
      use_stdio: frames on the child's stdin/stdout instead of fds 3/4.
      args: extra arguments for `serve` (e.g. ["--max-frame-bytes", "1000"]).
      command: the argv prefix that starts the server (default: this Python, -m bridge).
    """

    def __init__(self, use_stdio: bool = False, args=(), command=None, env=None):
        self.use_stdio = use_stdio
        self._ids = itertools.count(1)
        self._buffer = b""
        self.stderr_file = tempfile.TemporaryFile()
        argv = list(command or [sys.executable, "-m", "bridge", "serve"]) + list(args)
        if use_stdio:
            argv.append("--use-stdio")
        child_env = dict(os.environ if env is None else env)
        child_env.setdefault("JAX_PLATFORMS", "cpu")
        child_env["PYTHONPATH"] = ROOT + os.pathsep + child_env.get("PYTHONPATH", "")
        if use_stdio:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self.stderr_file, env=child_env, cwd=ROOT,
                                         bufsize=0)
            self.out_fd = self.proc.stdin.fileno()
            self.in_fd = self.proc.stdout.fileno()
        else:
            self.proc, self.out_fd, self.in_fd = spawn_on_fds_3_4(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=self.stderr_file, env=child_env, cwd=ROOT)

    # --------------------------------------------------------------- raw bytes

    def send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.out_fd, view):]

    def send_frame(self, payload: bytes) -> None:
        self.send_raw(frame(payload))

    def send_term(self, term) -> None:
        self.send_frame(encode(term))

    def send_call(self, function: str, args: list, call_id=None, module="bridge.api") -> int:
        call_id = next(self._ids) if call_id is None else call_id
        self.send_term((Atom("C"), call_id, Atom(module), Atom(function), list(args)))
        return call_id

    def _read_exactly(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self._buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.in_fd], [], [], left)[0]:
                raise TimeoutError(f"no reply within {timeout} s; stderr:\n{self.stderr()}")
            chunk = os.read(self.in_fd, 1 << 16)
            if not chunk:
                raise EOFError(f"server closed its output; stderr:\n{self.stderr()}")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def recv_frame(self, timeout: float = 60.0) -> bytes:
        (length,) = struct.unpack(">I", self._read_exactly(4, timeout))
        return self._read_exactly(length, timeout)

    def recv(self, timeout: float = 60.0):
        """The next reply term, decoded."""
        return decode(self.recv_frame(timeout))

    # --------------------------------------------------------------- calls

    def result(self, reply, call_id=None):
        """The value of an `{:r, id, value}` reply; raises RemoteError for `{:e, ...}`."""
        tag, reply_id, value = reply
        if call_id is not None:
            assert reply_id == call_id, f"reply for id {reply_id}, expected {call_id}"
        if tag == "e":
            _, cls, message, tb = value
            raise RemoteError(str(cls), message.decode(), [line.decode() for line in tb])
        assert tag == "r", reply
        return value

    def call(self, function: str, *args, timeout: float = 60.0, module="bridge.api"):
        call_id = self.send_call(function, list(args), module=module)
        return self.result(self.recv(timeout), call_id)

    def error(self, function: str, *args, module="bridge.api") -> RemoteError:
        """Call, expecting an error reply; returns it."""
        with pytest.raises(RemoteError) as info:
            self.call(function, *args, module=module)
        return info.value

    # --------------------------------------------------------------- lifecycle

    def stderr(self) -> str:
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode(errors="replace")

    def close_input(self) -> None:
        if self.out_fd is not None:
            if self.use_stdio:
                self.proc.stdin.close()
            else:
                os.close(self.out_fd)
            self.out_fd = None

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        self.close_input()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.use_stdio:
            os.close(self.in_fd)
        else:
            self.proc.stdout.close()
        self.stderr_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture(scope="module", params=["fd34", "stdio"])
def serve_process(request):
    """A server shared by a test module, once per descriptor mode."""
    client = PortClient(use_stdio=request.param == "stdio")
    yield client
    client.close()


@pytest.fixture
def port():
    """A fresh server (fds 3/4) for one test."""
    client = PortClient()
    yield client
    client.close()


def assert_plain(value, where: str = "result") -> None:
    """Exact built-in values only (what ErlPort can send without pickling), finite floats."""
    kind = type(value)
    assert kind in (int, float, bool, type(None), str, bytes, list, tuple, dict), \
        f"{where} is a {kind.__qualname__}"
    if kind is float:
        assert value - value == 0.0, f"{where} is {value}"
    elif kind in (list, tuple):
        for i, item in enumerate(value):
            assert_plain(item, f"{where}[{i}]")
    elif kind is dict:
        for key, item in value.items():
            assert type(key) is str, f"{where} has key {key!r}"
            assert_plain(item, f"{where}[{key!r}]")
