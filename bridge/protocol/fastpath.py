"""Fast lanes for the calls a control loop makes most: one observation in, one action out.

`select_action` is cheap to compute (a forward pass of a small net on the host, ~10 µs)
and waits on the wire on every env step, so the general path's fixed cost (decode the
whole term into Python values, look the function up, check its arity, normalise every
argument, encode the reply: ~12 µs) would more than double it. This module recognises
the one common shape of that call directly in the frame's bytes and builds its reply
from bytes:

    {:C, id, :"bridge.api", :select_action, [{tag, n}, [f1, ..., fk]]}
    {:C, id, :"bridge.api", :select_action, [{tag, n}, [f1, ..., fk], opts]}

with `id` and `n` small or 32-bit integers, `tag` an atom or a binary, every `f` a float
(NEW_FLOAT_EXT, as `term_to_binary` writes floats), and `opts` nil, `[]` or
`%{greedy: true | false}`. The fused `step` has a lane too, for one env slot (the
general path costs it ~35 µs, on every env step of an Elixir-driven training loop) and
for several, given as lists of the same length: rows of floats for the observations
(and final observations), floats or integers for the rewards, booleans for the flags
(the general path costs 8 slots ~200 µs).

The lane only ever accepts or declines: any other shape, any byte it does not expect,
and anything the caller's check refuses (an unknown handle, a wrong length, a value that
is not finite as a float32) falls through to the general path, which then answers the
call, errors included. So the lane changes no result and no message, only the time;
tests/test_fastpath.py checks that its replies are byte for byte those of the general
path.
"""
from __future__ import annotations

import functools
import struct

from bridge.protocol.etf import Atom, encode

__all__ = ["CallFailed", "parse_call", "result_reply", "results_reply"]

_REPLY_HEAD = b"\x83h\x03w\x01r"  # {:r, ...}, as `encode` writes it
_R = Atom("r")
_MODULE = b"bridge.api"
_FUNCTION = b"select_action"
_STEP = b"step"
_SELECT_ACTION, _STEP_CALL, _STEP_ROWS = "select_action", "step", "step_rows"  # parse_call's kinds
_AGENT = b"agent"
_GREEDY = b"greedy"

# The start of {:C, ...: version, SMALL_TUPLE_EXT of 5, the atom C in each encoding.
_HEADS_6 = (b"\x83h\x05w\x01C", b"\x83h\x05s\x01C")
_HEADS_7 = (b"\x83h\x05d\x00\x01C", b"\x83h\x05v\x00\x01C")

_i32 = struct.Struct(">i")
_u32 = struct.Struct(">I")
_f64 = struct.Struct(">d")
# The last select_action call's bytes from the module atom to the first float, its bytes
# after the last float, handle number, greedy, float tags and the struct that reads the
# floats.
_last: list = []

# `encode` writes 0..255 as SMALL_INTEGER_EXT and the rest of int32 as INTEGER_EXT.
_SMALL_INTS = [bytes((97, i)) for i in range(256)]


class _Decline(Exception):
    """Not the shape this lane serves; the general path takes the frame."""


def _atom(data: bytes, i: int) -> tuple[bytes, int]:
    """(name bytes, next offset) of the atom at `i`, in any of its four encodings."""
    tag = data[i]
    if tag == 119 or tag == 115:  # SMALL_ATOM_UTF8_EXT, SMALL_ATOM_EXT
        start = i + 2
        end = start + data[i + 1]
    elif tag == 100 or tag == 118:  # ATOM_EXT, ATOM_UTF8_EXT (OTP < 26 writes these)
        start = i + 3
        end = start + (data[i + 1] << 8 | data[i + 2])
    else:
        raise _Decline
    return data[start:end], end


def _int(data: bytes, i: int) -> tuple[int, int]:
    tag = data[i]
    if tag == 97:  # SMALL_INTEGER_EXT
        return data[i + 1], i + 2
    if tag == 98:  # INTEGER_EXT
        return _i32.unpack_from(data, i + 1)[0], i + 5
    raise _Decline


def _text(data: bytes, i: int) -> tuple[bytes, int]:
    """A handle tag: an atom or a binary."""
    if data[i] == 109:  # BINARY_EXT
        start = i + 5
        end = start + _u32.unpack_from(data, i + 1)[0]
        return data[start:end], end
    return _atom(data, i)


def _greedy(data: bytes, i: int) -> tuple[bool, int]:
    tag = data[i]
    if tag == 106:  # [] - no options
        return False, i + 1
    if tag == 116:  # MAP_EXT
        if _u32.unpack_from(data, i + 1)[0] != 1:
            raise _Decline
        key, i = _atom(data, i + 5)
        value, i = _atom(data, i)
        if key != _GREEDY or (value != b"true" and value != b"false"):
            raise _Decline
        return value == b"true", i
    name, i = _atom(data, i)
    if name != b"nil":
        raise _Decline
    return False, i


def parse_call(data: bytes) -> tuple | None:
    """The parts of a call a lane serves, or None for any other frame (which the general
    path then decodes and answers):

      ("select_action", call id, agent handle number, the observation's floats, greedy)
      ("step", call id, agent handle number, obs floats, reward, terminated, truncated,
       final_obs floats or None)
      ("step_rows", call id, agent handle number, obs rows, rewards, terminated flags,
       truncated flags, final_obs rows or None): `step` of several env slots, each a
       tuple with one entry (a tuple of floats for the rows) per slot
    """
    try:
        if data.startswith(_HEADS_6):
            i = 6
        elif data.startswith(_HEADS_7):
            i = 7
        else:
            return None
        if data[i] == 97:  # SMALL_INTEGER_EXT, the usual id (inlined: this runs per call)
            call_id, i = data[i + 1], i + 2
        else:
            call_id, i = _int(data, i)
        # A caller repeats the same select_action call: only the id and the floats change.
        # The bytes between them and after them are compared with the last call's at once.
        if _last and data.startswith(_last[0], i):
            middle, tail, number, greedy, marks, row = _last
            start = i + len(middle)
            end = start + row.size
            if data[start:end:9] == marks and len(data) == end + len(tail) \
                    and data.endswith(tail):
                return _SELECT_ACTION, call_id, number, row.unpack_from(data, start), greedy
        first = i
        name, i = _atom(data, i)
        if name != _MODULE:
            return None
        name, i = _atom(data, i)
        if data[i] != 108:  # LIST_EXT: the arguments
            return None
        n_args = _u32.unpack_from(data, i + 1)[0]
        if data[i + 5] != 104 or data[i + 6] != 2:
            return None  # the handle must be a 2-tuple
        tag, i = _text(data, i + 7)
        if tag != _AGENT:
            return None
        number, i = _int(data, i)
        if data[i] == 108 and data[i + 5] == 108:  # a list of lists: `step` of several slots
            return _step_rows(data, i, name, n_args, call_id, number)
        start = i + 5  # the first float's tag
        values, i = _floats(data, i)
        if name == _FUNCTION and (n_args == 2 or n_args == 3):
            end = i - 1  # the float list's tail
            greedy, i = _greedy(data, i) if n_args == 3 else (False, i)
            if data[i] != 106 or i + 1 != len(data):
                return None
            _last[:] = [data[first:start], data[end:], number, greedy, b"F" * len(values),
                        _row(len(values))]
            return _SELECT_ACTION, call_id, number, values, greedy
        if name != _STEP or (n_args != 5 and n_args != 6):
            return None
        reward, i = _number(data, i)
        terminated, i = _bool(data, i)
        truncated, i = _bool(data, i)
        final = _final_and_end(data, i, n_args, _floats)
        return _STEP_CALL, call_id, number, values, float(reward), terminated, truncated, final
    except (_Decline, IndexError, struct.error):
        return None


def _step_rows(data: bytes, i: int, name: bytes, n_args: int, call_id: int, number: int) -> tuple | None:
    """The rest of a `step` frame of several env slots, from its observation rows on."""
    if name != _STEP or (n_args != 5 and n_args != 6):
        return None
    rows, i = _list(data, i, _floats)
    rewards, i = _list(data, i, _number)
    terminated, i = _list(data, i, _bool)
    truncated, i = _list(data, i, _bool)
    final = _final_and_end(data, i, n_args, lambda data, i: _list(data, i, _floats))
    return (_STEP_ROWS, call_id, number, rows, tuple(float(r) for r in rewards), terminated, truncated,
            final)


def _final_and_end(data: bytes, i: int, n_args: int, read) -> tuple | None:
    """A `step` call's optional last argument, final_obs (read by `read`, or nil), whose
    end must be the argument list's end and the frame's."""
    final = None
    if n_args == 6:
        if data[i] == 108:
            final, i = read(data, i)
        else:
            name, i = _atom(data, i)
            if name != b"nil":
                raise _Decline
    if data[i] != 106 or i + 1 != len(data):
        raise _Decline
    return final


def _list(data: bytes, i: int, item) -> tuple[tuple, int]:
    """A non-empty proper list at `i` (LIST_EXT) whose elements `item` reads, and the
    offset after it."""
    if data[i] != 108:
        raise _Decline
    k = _u32.unpack_from(data, i + 1)[0]
    if k == 0 or k > len(data):  # a length the frame cannot hold allocates nothing
        raise _Decline
    i += 5
    out = []
    for _ in range(k):
        value, i = item(data, i)
        out.append(value)
    if data[i] != 106:
        raise _Decline
    return tuple(out), i + 1


def _floats(data: bytes, i: int) -> tuple[tuple[float, ...], int]:
    """A non-empty list of NEW_FLOAT_EXT floats at `i`, and the offset after it."""
    if data[i] != 108:
        raise _Decline
    k = _u32.unpack_from(data, i + 1)[0]
    start, end = i + 5, i + 5 + 9 * k
    if k == 0 or end >= len(data):  # a length the frame cannot hold allocates nothing
        raise _Decline
    if data[start:end:9] != b"F" * k or data[end] != 106:
        raise _Decline
    return _row(k).unpack_from(data, start), end + 1


def _number(data: bytes, i: int) -> tuple[float, int]:
    if data[i] == 70:  # NEW_FLOAT_EXT
        return _f64.unpack_from(data, i + 1)[0], i + 9
    return _int(data, i)


def _bool(data: bytes, i: int) -> tuple[bool, int]:
    name, i = _atom(data, i)
    if name == b"true":
        return True, i
    if name != b"false":
        raise _Decline
    return False, i


class CallFailed(Exception):
    """A call the lane ran that then failed: the server replies with the error (the
    exception's __cause__), and must not run the call again down the general path."""

    def __init__(self, call_id: int):
        super().__init__(call_id)
        self.call_id = call_id


@functools.lru_cache(maxsize=64)
def _row(k: int) -> struct.Struct:
    """Reads k NEW_FLOAT_EXT terms: skip each tag byte, read the big-endian double."""
    return struct.Struct(">" + "xd" * k)


def result_reply(call_id: int, value: int) -> bytes:
    """`encode((:r, call_id, value))` for two int32 values, without the general encoder."""
    if 0 <= call_id < 256 and 0 <= value < 256:
        return _REPLY_HEAD + _SMALL_INTS[call_id] + _SMALL_INTS[value]
    return _REPLY_HEAD + _int_bytes(call_id) + _int_bytes(value)


def results_reply(call_id: int, values: list[int]) -> bytes:
    """`{:r, call_id, values}` for a list of ints, as the general path encodes it."""
    return encode((_R, call_id, values))


def _int_bytes(value: int) -> bytes:
    if 0 <= value < 256:
        return _SMALL_INTS[value]
    return b"b" + _i32.pack(value)
