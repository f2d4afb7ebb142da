"""`python -m bridge.echo [--reply]`: the floor of a round trip, for the benchmarks.

Reads packet-4 frames on fd 3 and writes on fd 4, as `bridge serve` does, and decodes
nothing:

  (default)  every frame goes back as it came.
  --reply    every call `{:C, id, module, function, args}` is answered `{:r, id, args}`,
             the reply spliced from the call's bytes: a port owner such as
             `DQNBridge.Python` then takes the round trip with all its own work (encode,
             pending-call table, decode, reply) and none of the server's.

`python -m bridge bench protocol` and `mix dqn.bench` set the server's numbers beside
these. Only the standard library is imported; the process exits at the end of input.
"""
from __future__ import annotations

import os
import struct
import sys

_REPLY_HEAD = b"\x83h\x03w\x01r"


def _skip_atom(data: bytes, i: int) -> int:
    tag = data[i]
    if tag in (115, 119):  # SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT
        return i + 2 + data[i + 1]
    if tag in (100, 118):  # ATOM_EXT, ATOM_UTF8_EXT
        return i + 3 + (data[i + 1] << 8 | data[i + 2])
    raise ValueError(f"expected an atom at byte {i}, found tag {tag}")


def _skip_int(data: bytes, i: int) -> int:
    tag = data[i]
    if tag == 97:  # SMALL_INTEGER_EXT
        return i + 2
    if tag == 98:  # INTEGER_EXT
        return i + 5
    if tag == 110:  # SMALL_BIG_EXT
        return i + 3 + data[i + 1]
    raise ValueError(f"expected an integer at byte {i}, found tag {tag}")


def reply_to(call: bytes) -> bytes:
    """`{:r, id, args}` for the call `{:C, id, module, function, args}`, by splicing."""
    if not call.startswith(b"\x83h\x05"):
        raise ValueError("not a call: expected a 5-tuple")
    id_start = _skip_atom(call, 3)
    id_end = _skip_int(call, id_start)
    args = _skip_atom(call, _skip_atom(call, id_end))
    return _REPLY_HEAD + call[id_start:id_end] + call[args:]


def main(argv: list[str], in_fd: int = 3, out_fd: int = 4) -> int:
    if argv not in ([], ["--reply"]):
        print("usage: python -m bridge.echo [--reply]", file=sys.stderr)
        return 2
    answer = reply_to if argv else None
    buffer = b""
    while True:
        while len(buffer) < 4:
            chunk = os.read(in_fd, 65536)
            if not chunk:
                return 0
            buffer += chunk
        end = 4 + struct.unpack(">I", buffer[:4])[0]
        while len(buffer) < end:
            chunk = os.read(in_fd, 65536)
            if not chunk:
                return 0
            buffer += chunk
        if answer is None:
            os.write(out_fd, buffer[:end])
        else:
            body = answer(buffer[4:end])
            os.write(out_fd, struct.pack(">I", len(body)) + body)
        buffer = buffer[end:]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
