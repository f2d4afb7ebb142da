"""The wire: Erlang term codec and normalisation (etf), packet-4 framing, the call loop.

Knows nothing of reinforcement learning; `bridge.serve` hands the server the allowlist of
`bridge.api`. The one exception is `fastpath`, which recognises the bytes of the usual
`bridge.api` `select_action` and `step` calls so that the api can answer them without a
full decode.
"""
from bridge.protocol.etf import (Atom, DecodeError, EncodeError, as_array, as_bool,
                                 as_float, as_int, as_mapping, as_options, as_text,
                                 atom_name, decode, describe, encode, is_nil,
                                 tensor_to_array, to_builtin)
from bridge.protocol.framing import (DEFAULT_MAX_FRAME_BYTES, FrameError, FrameReader,
                                     FrameTooLarge, frame)
from bridge.protocol.server import CallError, Server, watch_parent

__all__ = [
    "Atom", "DecodeError", "EncodeError", "as_array", "as_bool", "as_float", "as_int",
    "as_mapping", "as_options", "as_text", "atom_name", "decode", "describe", "encode",
    "is_nil", "tensor_to_array", "to_builtin",
    "DEFAULT_MAX_FRAME_BYTES", "FrameError", "FrameReader", "FrameTooLarge", "frame",
    "CallError", "Server", "watch_parent",
]
