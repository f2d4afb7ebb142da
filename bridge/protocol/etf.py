"""Erlang external term format (ETF) <-> Python values, with the mapping of DESIGN.md.

| Erlang                        | Python                                              |
|-------------------------------|-----------------------------------------------------|
| integer (any size), float     | int, float                                          |
| `true` / `false` / `nil`      | True / False / None                                 |
| any other atom                | `Atom` (a `str` subclass), UTF-8 and Latin-1 atoms  |
| binary                        | bytes (a Python `str` is encoded as a UTF-8 binary) |
| list (charlists too), tuple   | list (of ints for a charlist), tuple                |
| map                           | dict                                                |
| `:nan`, `:infinity`, `:neg_infinity` | what a non-finite float is encoded as        |

A numpy array is encoded as `{:tensor, dtype, shape, data}` and numpy scalars as the
matching Python number; the reverse direction (a tensor term into a numpy array) belongs
to the normalisation helpers at the end of this module (`as_array` and friends, which
`bridge.api` runs on every argument), so that `decode` stays a plain ETF reader. Improper lists, bit strings, pids, ports, references and funs are refused:
nothing on the wire can name code or a process on this side.

The reader is hand-written rather than built on erlang-py because the mapping above
differs from erlang-py's at almost every type (it reads charlists as bytes, `undefined`
as None, needs wrapping objects to write binaries and atoms, and inflates compressed terms
without a size bound), and because a call round trip has a budget of a few microseconds
for decoding; tests/test_etf.py checks both directions against erlang-py and a real `erl`.
"""
from __future__ import annotations

import math
import struct
import zlib

import numpy as np

__all__ = ["Atom", "DecodeError", "EncodeError", "decode", "encode", "decode_call_id",
           "TENSOR_DTYPES", "atom_name", "is_nil", "describe", "as_text", "as_bool", "as_int",
           "as_float", "as_array", "tensor_to_array", "as_mapping", "as_options", "to_builtin"]

VERSION = 131
MAX_ATOM_CHARS = 255
"""Erlang refuses atoms longer than 255 characters."""


class Atom(str):
    """An Erlang atom other than true/false/nil; compares equal to its name as a str."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


class DecodeError(ValueError):
    """The bytes are not a term this codec accepts; the message says where and why."""


class EncodeError(TypeError):
    """A Python value has no Erlang term in our mapping; the message names its type."""


for _cls in (Atom, DecodeError, EncodeError):
    _cls.__module__ = "bridge.protocol"

# Atoms repeat on every call (`:C`, `:"bridge.api"`, function names, map keys), so their
# Atom objects are kept; the cache is bounded so that random atoms cannot grow memory.
_ATOM_CACHE_MAX = 4096
_latin1_atoms: dict[bytes, object] = {}
_utf8_atoms: dict[bytes, object] = {}
_SPECIAL_ATOMS = {"true": True, "false": False, "nil": None}

_unpack_double = struct.Struct(">d").unpack_from
_unpack_u16 = struct.Struct(">H").unpack_from
_unpack_u32 = struct.Struct(">I").unpack_from
_unpack_i32 = struct.Struct(">i").unpack_from

_UNSUPPORTED_TAGS = {
    77: "bit string", 78: "atom cache reference", 82: "atom cache reference",
    88: "pid", 103: "pid", 89: "port", 102: "port", 120: "port",
    90: "reference", 101: "reference", 114: "reference",
    112: "fun", 113: "external fun", 117: "fun", 121: "local term",
}


def _atom(name_bytes: bytes, utf8: bool):
    cache = _utf8_atoms if utf8 else _latin1_atoms
    atom = cache.get(name_bytes, cache)
    if atom is not cache:
        return atom
    try:
        name = name_bytes.decode("utf-8" if utf8 else "latin-1")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"atom is not valid UTF-8: {name_bytes[:40]!r}") from exc
    atom = _SPECIAL_ATOMS.get(name, cache)
    if atom is cache:
        atom = Atom(name)
    if len(cache) < _ATOM_CACHE_MAX:
        cache[name_bytes] = atom
    return atom


def _need(data: bytes, i: int, n: int) -> None:
    if i + n > len(data):
        raise DecodeError(f"term truncated: needs {n} byte(s) at offset {i}, "
                          f"only {len(data) - i} left")


def _decode_items(data, i: int, n: int) -> tuple[list, int]:
    """n consecutive terms from offset i (tuple or list elements); floats take a fast path."""
    items = []
    append = items.append
    for _ in range(n):
        if data[i] == 70:  # NEW_FLOAT_EXT
            append(_unpack_double(data, i + 1)[0])
            i += 9
        else:
            value, i = _decode_at(data, i)
            append(value)
    return items, i


def _decode_at(data: bytes, i: int):
    """Decode the term starting at `data[i]`; returns (value, index after it).

    Running past the end raises IndexError or struct.error, which `decode` reports as a
    truncated term; the common tags come first and skip explicit length checks.
    """
    tag = data[i]
    i += 1
    if tag == 70:  # NEW_FLOAT_EXT
        return _unpack_double(data, i)[0], i + 8
    if tag == 97:  # SMALL_INTEGER_EXT
        return data[i], i + 1
    if tag == 119 or tag == 115:  # SMALL_ATOM_UTF8_EXT, SMALL_ATOM_EXT
        end = i + 1 + data[i]
        if end > len(data):
            raise IndexError
        return _atom(data[i + 1:end], tag == 119), end
    if tag == 104:  # SMALL_TUPLE_EXT
        items, i = _decode_items(data, i + 1, data[i])
        return tuple(items), i
    if tag == 108:  # LIST_EXT
        n = _unpack_u32(data, i)[0]
        i += 4
        if n > 16 and data[i] == 70 and _all_floats(data, i, n):
            # A long list of floats (an observation batch): read it in one numpy pass.
            items = np.frombuffer(data, dtype=_TAGGED_DOUBLE, count=n, offset=i)["value"].tolist()
            i += 9 * n
        else:
            items, i = _decode_items(data, i, n)
        if data[i] != 106:
            raise DecodeError(f"improper list (a list whose tail is not []) at offset {i}: "
                              "improper lists are not accepted")
        return items, i + 1
    if tag == 106:  # NIL_EXT
        return [], i
    if tag == 100 or tag == 118:  # ATOM_EXT (Latin-1), ATOM_UTF8_EXT
        end = i + 2 + _unpack_u16(data, i)[0]
        if end > len(data):
            raise IndexError
        return _atom(data[i + 2:end], tag == 118), end
    if tag == 105:  # LARGE_TUPLE_EXT
        n = _unpack_u32(data, i)[0]
        i += 4
        _need(data, i, n)  # every element takes at least one byte
        items = []
        append = items.append
        for _ in range(n):
            value, i = _decode_at(data, i)
            append(value)
        return tuple(items), i
    if tag == 109:  # BINARY_EXT
        _need(data, i, 4)
        n = _unpack_u32(data, i)[0]
        i += 4
        _need(data, i, n)
        return data[i:i + n], i + n
    if tag == 116:  # MAP_EXT
        _need(data, i, 4)
        n = _unpack_u32(data, i)[0]
        i += 4
        _need(data, i, 2 * n)
        result = {}
        for _ in range(n):
            key, i = _decode_at(data, i)
            value, i = _decode_at(data, i)
            try:
                result[key] = value
            except TypeError:
                raise DecodeError(f"map key {_brief(key)} is a list or map; "
                                  "only atoms, numbers, binaries and tuples of them "
                                  "are accepted as map keys") from None
        return result, i
    if tag == 98:  # INTEGER_EXT
        _need(data, i, 4)
        return _unpack_i32(data, i)[0], i + 4
    if tag == 107:  # STRING_EXT: a list of small integers (a charlist or e.g. [0, 1, 1])
        _need(data, i, 2)
        n = _unpack_u16(data, i)[0]
        _need(data, i + 2, n)
        return list(data[i + 2:i + 2 + n]), i + 2 + n
    if tag == 110 or tag == 111:  # SMALL_BIG_EXT, LARGE_BIG_EXT
        if tag == 110:
            _need(data, i, 2)
            n = data[i]
            i += 1
        else:
            _need(data, i, 5)
            n = _unpack_u32(data, i)[0]
            i += 4
        sign = data[i]
        _need(data, i + 1, n)
        value = int.from_bytes(data[i + 1:i + 1 + n], "little")
        return (-value if sign else value), i + 1 + n
    if tag == 99:  # FLOAT_EXT: 31 bytes of text, written by very old nodes
        _need(data, i, 31)
        text = data[i:i + 31].split(b"\0", 1)[0]
        try:
            return float(text), i + 31
        except ValueError:
            raise DecodeError(f"FLOAT_EXT holds no number: {text!r}") from None
    if tag == 80:
        raise DecodeError(f"compressed term (tag 80) nested at offset {i - 1}: "
                          "only a whole term may be compressed")
    what = _UNSUPPORTED_TAGS.get(tag)
    if what is not None:
        raise DecodeError(f"a {what} (tag {tag}) at offset {i - 1} cannot be sent to Python: "
                          "send numbers, atoms, binaries, lists, tuples or maps")
    raise DecodeError(f"unknown term tag {tag} at offset {i - 1}")


_TAGGED_DOUBLE = np.dtype([("tag", "u1"), ("value", ">f8")])


def _all_floats(data: bytes, i: int, n: int) -> bool:
    if i + 9 * n > len(data):
        return False
    return data[i:i + 9 * n:9] == b"F" * n


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def decode(data: bytes, max_inflated_bytes: int = 64 << 20):
    """Decode one complete term (version byte first); raise DecodeError on anything else.

    Args:
      data: the bytes of one frame.
      max_inflated_bytes: the largest size a compressed term may declare once inflated.
    """
    if not data:
        raise DecodeError("empty frame: expected a term starting with version byte 131")
    if data[0] != VERSION:
        raise DecodeError(f"term starts with byte {data[0]}, expected version byte 131 "
                          "(:erlang.term_to_binary/1 output)")
    if len(data) > 1 and data[1] == 80:
        data = _inflate(data, max_inflated_bytes)
        start = 0
    else:
        start = 1
    try:
        value, end = _decode_at(data, start)
    except (IndexError, struct.error):
        raise DecodeError(f"term truncated: ran out of bytes (the term has {len(data)})") from None
    except RecursionError:
        raise DecodeError("term nested too deeply to decode") from None
    if end != len(data):
        raise DecodeError(f"{len(data) - end} unread byte(s) after the term at offset {end}")
    return value


def _inflate(data: bytes, max_inflated_bytes: int) -> bytes:
    if len(data) < 6:
        raise DecodeError("compressed term truncated: no uncompressed size")
    size = _unpack_u32(data, 2)[0]
    if size > max_inflated_bytes:
        raise DecodeError(f"compressed term declares {size} bytes uncompressed, "
                          f"above the limit of {max_inflated_bytes} bytes")
    inflater = zlib.decompressobj()
    try:
        inflated = inflater.decompress(data[6:], size + 1)
    except zlib.error as exc:
        raise DecodeError(f"compressed term is corrupt: {exc}") from None
    if len(inflated) != size or not inflater.eof or inflater.unused_data:
        raise DecodeError(f"compressed term is corrupt: declares {size} bytes "
                          f"uncompressed, inflates to {len(inflated)}")
    return inflated


def decode_call_id(data: bytes):
    """Best-effort id of a call `{:C, id, ...}` in a frame that failed to decode, else None.

    Lets the server answer a malformed call with an error its caller can match.
    """
    try:
        if data[0] != VERSION or data[1] not in (104, 105):
            return None
        i = 3 if data[1] == 104 else 6
        _, i = _decode_at(data, i)
        call_id, _ = _decode_at(data, i)
    except Exception:  # noqa: BLE001 - any failure just means "no id"
        return None
    return call_id if type(call_id) is int else None


# --- encoding -----------------------------------------------------------------------------

_pack_double = struct.Struct(">Bd").pack
_pack_i32 = struct.Struct(">Bi").pack
_pack_u32 = struct.Struct(">BI").pack
_pack_u16 = struct.Struct(">BH").pack

_NAN, _INF, _NEG_INF = Atom("nan"), Atom("infinity"), Atom("neg_infinity")
_TENSOR = Atom("tensor")
TENSOR_DTYPES = {"f32": "<f4", "f64": "<f8", "s32": "<i4", "s64": "<i8", "u8": "u1"}
"""Tensor dtype atom -> little-endian numpy dtype."""
_NUMPY_TO_TENSOR = {np.dtype(v).newbyteorder("="): Atom(k) for k, v in TENSOR_DTYPES.items()}
_NUMPY_TO_TENSOR[np.dtype(bool)] = Atom("u8")

_encoded_atoms: dict[str, bytes] = {}


def _encode_atom(name: str) -> bytes:
    encoded = _encoded_atoms.get(name)
    if encoded is None:
        if len(name) > MAX_ATOM_CHARS:
            raise EncodeError(f"atom of {len(name)} characters: Erlang allows at most 255")
        raw = name.encode("utf-8")
        encoded = (bytes((119, len(raw))) if len(raw) < 256 else _pack_u16(118, len(raw))) + raw
        if len(_encoded_atoms) < _ATOM_CACHE_MAX:
            _encoded_atoms[name] = encoded
    return encoded


def _encode_int(value: int, out: list) -> None:
    if 0 <= value < 256:
        out.append(bytes((97, value)))
    elif -2147483648 <= value <= 2147483647:
        out.append(_pack_i32(98, value))
    else:
        magnitude = -value if value < 0 else value
        raw = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
        sign = 1 if value < 0 else 0
        out.append((bytes((110, len(raw), sign)) if len(raw) < 256
                    else _pack_u32(111, len(raw)) + bytes((sign,))) + raw)


def _encode_float(value: float, out: list) -> None:
    if value - value == 0.0:  # finite
        out.append(_pack_double(70, value))
    elif value != value:
        out.append(_encode_atom(_NAN))
    else:
        out.append(_encode_atom(_INF if value > 0 else _NEG_INF))


def _encode_into(term, out: list) -> None:
    kind = type(term)
    if kind is float:
        _encode_float(term, out)
    elif kind is int:
        _encode_int(term, out)
    elif term is None:
        out.append(b"w\x03nil")
    elif kind is bool:
        out.append(b"w\x04true" if term else b"w\x05false")
    elif kind is Atom:
        out.append(_encode_atom(term))
    elif kind is list:
        if term:
            out.append(_pack_u32(108, len(term)))
            for item in term:
                _encode_into(item, out)
        out.append(b"j")
    elif kind is tuple:
        n = len(term)
        out.append(bytes((104, n)) if n < 256 else _pack_u32(105, n))
        for item in term:
            _encode_into(item, out)
    elif kind is dict:
        out.append(_pack_u32(116, len(term)))
        for key, value in term.items():
            _encode_into(key, out)
            _encode_into(value, out)
    elif kind is str:
        raw = term.encode("utf-8")
        out.append(_pack_u32(109, len(raw)))
        out.append(raw)
    elif kind is bytes:
        out.append(_pack_u32(109, len(term)))
        out.append(term)
    else:
        _encode_other(term, out)


def _encode_other(term, out: list) -> None:
    """Subclasses of the built-ins, numpy values, bytearray/memoryview."""
    if isinstance(term, bool):
        _encode_into(bool(term), out)
    elif isinstance(term, Atom):
        out.append(_encode_atom(term))
    elif isinstance(term, (int, np.integer)):
        _encode_int(int(term), out)
    elif isinstance(term, (float, np.floating)):
        _encode_float(float(term), out)
    elif isinstance(term, np.bool_):
        _encode_into(bool(term), out)
    elif isinstance(term, str):
        _encode_into(str(term), out)
    elif isinstance(term, (bytes, bytearray, memoryview)):
        _encode_into(bytes(term), out)
    elif isinstance(term, np.ndarray):
        _encode_into(_tensor_term(term), out)
    elif isinstance(term, (list, tuple, dict)):
        _encode_into((list if isinstance(term, list) else tuple if isinstance(term, tuple)
                      else dict)(term), out)
    else:
        raise EncodeError(f"cannot send a value of type {type(term).__qualname__} to the "
                          "BEAM: use numbers, str, bytes, lists, tuples, dicts or numpy arrays")


def _tensor_term(array: np.ndarray) -> tuple:
    dtype = _NUMPY_TO_TENSOR.get(array.dtype.newbyteorder("="))
    if dtype is None:
        raise EncodeError(f"numpy dtype {array.dtype} has no tensor type: "
                          f"allowed {sorted(TENSOR_DTYPES)} (and bool as u8)")
    data = np.ascontiguousarray(array, dtype=TENSOR_DTYPES[dtype]).tobytes()
    return (_TENSOR, dtype, tuple(int(d) for d in array.shape), data)


def encode(term) -> bytes:
    """Encode a Python value as one ETF term (version byte first)."""
    out = [b"\x83"]
    try:
        _encode_into(term, out)
    except RecursionError:
        raise EncodeError("value nested too deeply to encode") from None
    return b"".join(out)


# --- normalisation ------------------------------------------------------------------------
# Arguments reach `bridge.api` either from our server (types above) or from the standard
# ErlPort library, whose Python side hands over atoms as a bytes subclass (nil included),
# Elixir strings as bytes, charlists as lists of ints and read-only list/dict subclasses.
# These helpers accept both and always return fresh, exact built-ins or numpy arrays.

_NON_FINITE = {"nan": math.nan, "infinity": math.inf, "neg_infinity": -math.inf}


def atom_name(value) -> str | None:
    """The name of an atom in either representation (ours: str subclass; ErlPort's: bytes
    subclass), else None. A plain str or bytes is text, not an atom."""
    kind = type(value)
    if kind is Atom:
        return str(value)
    if kind is not bytes and kind is not str:
        if isinstance(value, Atom):
            return str.__str__(value)
        if isinstance(value, bytes):
            return bytes(value).decode("utf-8", "replace")
    return None


def is_nil(value) -> bool:
    """None, or the atom `nil` as ErlPort delivers it."""
    return value is None or atom_name(value) == "nil"


def describe(value) -> str:
    """A short, safe rendering of a bad value for an error message."""
    name = atom_name(value)
    if name is not None:
        return f":{name}"
    return _brief(value)


def as_text(value, what: str) -> str:
    """str from a str, atom, UTF-8 binary or charlist."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{what} must be UTF-8 text, got {describe(value)}") from None
    if isinstance(value, list) and value and all(type(c) is int and 0 <= c <= 0x10FFFF
                                                  for c in value):
        return "".join(map(chr, value))
    raise ValueError(f"{what} must be text (a string, binary, atom or charlist), "
                     f"got {describe(value)}")


def as_bool(value, what: str) -> bool:
    """bool from True/False (or the atoms true/false as some clients deliver them)."""
    if value is True or value is False:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    name = atom_name(value)
    if name == "true" or name == "false":
        return name == "true"
    raise ValueError(f"{what} must be true or false, got {describe(value)}")


def as_int(value, what: str) -> int:
    """int from an int (not a bool) or numpy integer."""
    if type(value) is int:
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise ValueError(f"{what} must be an integer, got {describe(value)}")


def as_float(value, what: str) -> float:
    """float from an int or float, or the atoms :nan, :infinity, :neg_infinity."""
    kind = type(value)
    try:
        if kind is float or kind is int:
            return float(value)
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            return float(value)
    except OverflowError:  # an integer beyond the float range
        raise ValueError(f"{what} is too large for a float, got {describe(value)}") from None
    special = _NON_FINITE.get(atom_name(value) or "")
    if special is not None:
        return special
    raise ValueError(f"{what} must be a number, got {describe(value)}")


def as_array(value, dtype, what: str) -> np.ndarray:
    """A fresh numpy array of `dtype` from a (nested) list of numbers, a numpy array or a
    `{:tensor, dtype, shape, data}` term. Non-finite atoms become floats here; whether a
    NaN is acceptable is the caller's business."""
    dtype = np.dtype(dtype)
    if isinstance(value, np.ndarray):
        return _checked_cast(value, dtype, what)
    if isinstance(value, tuple):
        return _checked_cast(tensor_to_array(value, what), dtype, what)
    if isinstance(value, (bytes, bytearray, str)) or not isinstance(value, (list, int, float)):
        raise ValueError(f"{what} must be a number, a list of numbers or a tensor, "
                         f"got {describe(value)}")
    try:
        array = np.asarray(value)
    except ValueError:
        raise ValueError(f"{what} must be a rectangular (non-ragged) list of numbers, "
                         f"got {describe(value)}") from None
    if array.dtype.kind not in "fiub":
        array = np.asarray(_numbers_only(value, what), dtype=np.float64)
    return _checked_cast(array, dtype, what)


def _numbers_only(value, what: str):
    if isinstance(value, list):
        return [_numbers_only(item, what) for item in value]
    return as_float(value, f"every element of {what}")


def _checked_cast(array: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{what} must hold numbers, got an array of dtype {array.dtype}")
    if dtype.kind in "iu" and array.dtype.kind == "f":
        raise ValueError(f"{what} must hold integers, got {describe(array.tolist())}")
    with np.errstate(over="ignore"):
        out = np.array(array, dtype=dtype, copy=True)
    if out.dtype.kind == "f" and array.dtype.itemsize > out.dtype.itemsize:
        overflow = np.isinf(out) & np.isfinite(array)
        if overflow.any():
            value = array[overflow].flat[0]
            raise ValueError(f"{what} holds {value.item()!r}, beyond the range of {out.dtype} "
                             f"(largest magnitude {float(np.finfo(out.dtype).max):.6g})")
    return out


def tensor_to_array(term, what: str = "tensor") -> np.ndarray:
    """numpy array from `{:tensor, dtype, shape, data}` (data little-endian bytes)."""
    if len(term) != 4 or atom_name(term[0]) != "tensor":
        raise ValueError(f"{what}: a tuple must be {{:tensor, dtype, shape, data}}, "
                         f"got {describe(term)}")
    _, dtype_name, shape, data = term
    dtype = TENSOR_DTYPES.get(atom_name(dtype_name) or "")
    if dtype is None:
        raise ValueError(f"{what}: tensor dtype {describe(dtype_name)} is not one of "
                         f"{', '.join(':' + d for d in TENSOR_DTYPES)}")
    if isinstance(shape, list):
        shape = tuple(shape)
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"{what}: tensor shape must be a tuple of non-negative integers, "
                         f"got {describe(shape)}")
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"{what}: tensor data must be a binary, got {describe(data)}")
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise ValueError(f"{what}: tensor of shape {shape} and dtype :{atom_name(dtype_name)} "
                         f"needs {expected} data bytes, got {len(data)}")
    return np.frombuffer(bytes(data), dtype=dtype).reshape(shape)


def as_mapping(value, what: str) -> dict:
    """dict with str keys from a map (str, atom or binary keys), a keyword list or nil."""
    if is_nil(value):
        return {}
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)) and all(isinstance(p, tuple) and len(p) == 2
                                                   for p in value):
        items = value
    else:
        raise ValueError(f"{what} must be a map or a keyword list, got {describe(value)}")
    result = {}
    for key, item in items:
        result[as_text(key, f"a key of {what}")] = item
    return result


def as_options(value, allowed, what: str) -> dict:
    """`as_mapping`, refusing any key not in `allowed` with a message that lists them."""
    options = as_mapping(value, what)
    for key in options:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} in {what}: allowed keys are "
                             f"{', '.join(sorted(allowed))}")
    return options


def to_builtin(value, what: str = "result"):
    """Exact built-in copy of a result: numpy scalars and arrays become Python numbers and
    lists, subclasses of str/bytes/list/dict become the base type, dict keys become str.
    Raises ValueError naming the place of a NaN or infinite float (ErlPort cannot carry
    them) or of a value with no plain equivalent."""
    kind = type(value)
    if kind is int or kind is bool or value is None or kind is str or kind is bytes:
        return value
    if kind is float:
        if value - value != 0.0:
            raise ValueError(f"{what} is {value}, not a finite number")
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return to_builtin(float(value), what)
    if isinstance(value, np.ndarray):
        return to_builtin(value.tolist(), what)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        return {as_text(k, f"a key of {what}"): to_builtin(v, f"{what}[{str(k)!r}]")
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [to_builtin(v, f"{what}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise ValueError(f"{what} holds a {type(value).__qualname__}, which has no plain value")
