"""The call loop: read a frame, decode `{:C, id, module, function, args}`, call, reply.

The server knows nothing of what it serves: it gets a table of allowed functions and the
one module name they answer to. Anything else is refused with an error reply; nothing is
imported, evaluated or unpickled from the wire.

Replies (the shapes ErlPort uses):
  `{:r, id, result}`
  `{:e, id, {:python, class, message, traceback}}`  class an atom such as
      `:"builtins.ValueError"`, message a binary, traceback a list of binaries.
A frame that is not a valid call gets an error reply with the call's id when the id can
still be read, else with id nil.
"""
from __future__ import annotations

import ctypes
import inspect
import os
import select
import signal
import sys
import threading
import time
import traceback
from typing import Callable, Mapping

from bridge.protocol.etf import Atom, DecodeError, EncodeError, decode, decode_call_id, encode
from bridge.protocol.fastpath import CallFailed
from bridge.protocol.framing import (DEFAULT_MAX_FRAME_BYTES, FrameError, FrameReader,
                                     FrameTooLarge, frame, write_all)

__all__ = ["CallError", "Server", "watch_parent"]

_CALL = Atom("C")
_RESULT = Atom("r")
_ERROR = Atom("e")
_PYTHON = Atom("python")
_MAX_TRACEBACK_LINES = 40


class CallError(ValueError):
    """A call the server refuses before running anything: bad shape, unknown module or
    function, wrong number of arguments."""


CallError.__module__ = "bridge.protocol"


def _arity(function: Callable) -> tuple[int, int | None, str]:
    """(fewest, most (None = any) positional arguments, "(a, b, c=...)")."""
    params = inspect.signature(function).parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is p.empty for p in positional)
    variadic = any(p.kind is p.VAR_POSITIONAL for p in params)
    names = ", ".join(p.name if p.default is p.empty else f"{p.name}=..." for p in positional)
    return required, None if variadic else len(positional), f"({names})"


def _error_class(exc: BaseException) -> Atom:
    cls = type(exc)
    return Atom(f"{cls.__module__}.{cls.__qualname__}")


class Server:
    """Serves `functions` (name -> callable) as module `module` over two file descriptors.

    Args:
      functions: the allowlist; nothing else can be called.
      module: the module name calls must carry, e.g. "bridge.api".
      in_fd, out_fd: where frames arrive and where replies go.
      max_frame_bytes: longer frames are skipped and answered with an error.
      fast_reply: optional; given a frame's payload, the encoded reply, or None to leave
        the frame to the general path (see `bridge.protocol.fastpath`). It must answer
        exactly as the general path would. If it raises CallFailed, the call ran and
        failed, and its cause is the error reply; if it raises anything else, the
        general path answers. It may also return (reply, then): `then()` runs once the
        reply is written and before the next frame is read (work the caller need not
        wait for; it must keep its own errors).
      spin_seconds: after each reply, wait this long for the next frame without
        sleeping (see `FrameReader`); 0 blocks at once. Never after a reply with
        follow-up work: that work gives the caller its time, and needs the CPUs.
    """

    def __init__(self, functions: Mapping[str, Callable], module: str, in_fd: int,
                 out_fd: int, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 fast_reply: Callable[[bytes], bytes | tuple[bytes, Callable[[], None]] | None]
                 | None = None,
                 spin_seconds: float = 0.0):
        self.functions = dict(functions)
        self.module = module
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.max_frame_bytes = max_frame_bytes
        self.fast_reply = fast_reply
        self.spin_seconds = spin_seconds
        self._arity = {name: _arity(fn) for name, fn in self.functions.items()}

    def serve(self) -> int:
        """Answer calls until the input ends. Returns the process exit status: 0 at a
        clean end of input (or when the reader of our replies is gone), 2 when the input
        breaks inside a frame (the message goes to stderr)."""
        reader = FrameReader(self.in_fd, self.max_frame_bytes, self.spin_seconds)
        read, handle, out_fd = reader.read, self.handle, self.out_fd
        fast = self.fast_reply or _no_fast_reply
        then = None
        try:
            while True:
                # No spin after follow-up work: it has kept the caller waiting long
                # enough for the next call to be on its way, and its device work (a
                # training round) needs the CPUs a spin would take.
                spin, then = then is None, None
                try:
                    payload = read(spin)
                except FrameTooLarge as exc:
                    reply = self._error_reply(decode_call_id(exc.prefix), exc, with_tb=False)
                else:
                    if payload is None:
                        return 0
                    try:
                        reply = fast(payload)
                    except CallFailed as failed:  # it ran and failed: report, never rerun
                        reply = self._error_reply(failed.call_id, failed.__cause__, with_tb=True)
                    except Exception:  # noqa: BLE001 - the general path reports it
                        reply = None
                    if reply is None:
                        reply = handle(payload)
                    elif type(reply) is tuple:
                        reply, then = reply
                write_all(out_fd, frame(reply))
                if then is not None:
                    then()
        except FrameError as exc:
            print(f"bridge serve: {exc}", file=sys.stderr, flush=True)
            return 2
        except BrokenPipeError:
            print("bridge serve: the reply pipe is closed; exiting", file=sys.stderr, flush=True)
            return 0

    def handle(self, payload: bytes) -> bytes:
        """One frame in, the encoded reply out; never raises for a bad frame or call."""
        call_id = None
        try:
            call = decode(payload, self.max_frame_bytes)
            if type(call) is not tuple or len(call) != 5 or call[0] != _CALL \
                    or type(call[0]) is not Atom:
                raise CallError(f"expected a call {{:C, id, module, function, args}}, got "
                                f"{_brief(call)}")
            _, call_id, module, name, args = call
            function = None
            if type(name) is Atom and type(module) is Atom and module == self.module:
                function = self.functions.get(name)
            if function is None:
                raise self._unknown(module, name)
            if type(args) is not list:
                raise CallError(f"the arguments of {self.module}.{name} must be a list, "
                                f"got {_brief(args)}")
            fewest, most, signature = self._arity[name]
            if len(args) < fewest or (most is not None and len(args) > most):
                count = str(fewest) if fewest == most else \
                    f"{fewest} to {most}" if most is not None else f"at least {fewest}"
                raise CallError(f"{self.module}.{name}{signature} takes {count} argument(s), "
                                f"got {len(args)}")
        except DecodeError as exc:
            return self._error_reply(decode_call_id(payload), exc, with_tb=False)
        except CallError as exc:
            return self._error_reply(call_id, exc, with_tb=False)
        try:
            result = function(*args)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            return self._error_reply(call_id, exc, with_tb=True)
        try:
            return encode((_RESULT, call_id, result))
        except EncodeError as exc:
            return self._error_reply(call_id, EncodeError(f"the result of {self.module}.{name} "
                                                          f"cannot be sent: {exc}"), False)

    def _unknown(self, module, name) -> CallError:
        if module != self.module or type(module) is not Atom:
            return CallError(f"module {_brief(module)} cannot be called: only "
                             f"{self.module} is served")
        shown = name if type(name) is Atom else _brief(name)
        return CallError(f"{self.module}.{shown} is not an allowed function: allowed "
                         f"are {', '.join(sorted(self.functions))}")

    def _error_reply(self, call_id, exc: BaseException, with_tb: bool) -> bytes:
        lines = []
        if with_tb:
            # Skip the server's own frame: the caller wants to see where its call failed.
            tb = exc.__traceback__.tb_next if exc.__traceback__ else None
            lines = traceback.format_list(traceback.extract_tb(tb))[-_MAX_TRACEBACK_LINES:]
        return encode((_ERROR, call_id, (_PYTHON, _error_class(exc), str(exc), lines)))


def _no_fast_reply(payload: bytes) -> None:
    return None


def _brief(value) -> str:
    text = f":{value}" if type(value) is Atom else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_PR_SET_PDEATHSIG = 1


def watch_parent(interval: float = 0.25, reply_fd: int | None = None,
                 input_fd: int | None = None) -> None:
    """Make this process exit when its parent dies, even while the main thread is busy
    (in a JIT compile, say): the kernel sends SIGKILL on parent death where prctl exists,
    and a daemon thread polls the parent pid and calls os._exit as the portable backstop.

    Given `reply_fd`, the thread also exits (status 0) once nobody can read our replies:
    the BEAM closed the port, or the process owning it was killed while the BEAM lives on.
    The main thread would only notice at its next write, after a call that may run for
    minutes. A pipe's write end polls as POLLERR when its read end is closed. When
    `input_fd` has hung up as well, the port was closed the normal way and the exit is
    silent.

    Note: Linux delivers the signal when the *thread* that spawned us ends; a parent that
    starts the server from a short-lived thread should pass --no-parent-watch.
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(3)

    replies = inputs = None
    if reply_fd is not None:
        replies = select.poll()
        replies.register(reply_fd, 0)  # POLLERR, POLLHUP and POLLNVAL are always reported
    if input_fd is not None:
        inputs = select.poll()
        inputs.register(input_fd, 0)

    def poll() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os.write(2, b"bridge serve: parent process is gone; exiting\n")
                os._exit(3)
            if replies is not None and replies.poll(0):
                if inputs is None or not inputs.poll(0):
                    os.write(2, b"bridge serve: the reply pipe is closed; exiting\n")
                os._exit(0)

    threading.Thread(target=poll, name="bridge-parent-watch", daemon=True).start()
