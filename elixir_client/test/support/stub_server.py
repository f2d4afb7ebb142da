"""A stand-in port server for DQNBridge.Python's own tests (framing, pipelining, exits).

Speaks the same packet-4 frames on fds 3/4 as `python -m bridge serve`, but knows
only: echo(x) -> x, sleep(ms, x) -> x after ms, fail(msg) -> error reply,
exit(status) -> the process exits with that status before replying.
"""
import os
import struct
import sys
import time

import erlang


def reply(out, term):
    data = erlang.term_to_binary(term)
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


def main() -> None:
    inp = os.fdopen(3, "rb", buffering=0)
    out = os.fdopen(4, "wb", buffering=0)
    while True:
        header = inp.read(4)
        if len(header) < 4:
            return
        (size,) = struct.unpack(">I", header)
        data = b""
        while len(data) < size:
            data += inp.read(size - len(data))
        _tag, call_id, _module, fun, args = erlang.binary_to_term(data)
        name = fun.value.decode() if isinstance(fun.value, bytes) else fun.value
        if name == "echo":
            reply(out, (erlang.OtpErlangAtom(b"r"), call_id, args[0]))
        elif name == "sleep":
            time.sleep(args[0] / 1000)
            reply(out, (erlang.OtpErlangAtom(b"r"), call_id, args[1]))
        elif name == "exit":
            sys.exit(args[0])
        else:
            error = (erlang.OtpErlangAtom(b"python"), erlang.OtpErlangAtom(b"builtins.ValueError"),
                     erlang.OtpErlangBinary(b"bad call"), [erlang.OtpErlangBinary(b"line 1")])
            reply(out, (erlang.OtpErlangAtom(b"e"), call_id, error))


if __name__ == "__main__":
    main()
