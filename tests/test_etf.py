"""The term codec and normalisation helpers, checked against erlang-py and a real `erl`."""
from __future__ import annotations

import math
import shutil
import struct
import subprocess
import zlib

import erlang
import numpy as np
import pytest

from bridge.protocol import (Atom, DecodeError, EncodeError, as_array, as_bool, as_float,
                             as_int, as_mapping, as_options, as_text, decode, encode,
                             tensor_to_array, to_builtin)
from bridge.protocol.etf import decode_call_id

ROUND_TRIP = [
    0, 255, 256, -1, 2**31 - 1, -2**31, 2**31, -2**31 - 1, 2**64, -(2**64), 2**2100, -(2**2100),
    0.0, -0.0, 1.5, -1e300, 5e-324,
    True, False, None,
    Atom("ok"), Atom(""), Atom("bridge.api"), Atom("ünïcødé"), Atom("∂" * 255),
    b"", b"\x00\xff bytes",
    [], [1, [2, [3]]], (), (Atom("a"), 1), tuple(range(300)),
    {}, {Atom("k"): [1.0], 2: b"v", (1, Atom("x")): None},
    [float(i) / 3 for i in range(100)],  # the numpy fast path for long float lists
]


@pytest.mark.parametrize("term", ROUND_TRIP, ids=lambda t: repr(t)[:30])
def test_round_trip(term):
    assert decode(encode(term)) == term
    assert type(decode(encode(term))) is type(term)


def test_str_goes_out_as_utf8_binary():
    assert decode(encode("héllo")) == "héllo".encode()
    assert encode("é") == b"\x83m\x00\x00\x00\x02\xc3\xa9"


def test_non_finite_floats_are_atoms():
    assert decode(encode([math.nan, math.inf, -math.inf])) == \
        [Atom("nan"), Atom("infinity"), Atom("neg_infinity")]
    assert as_array([Atom("nan"), Atom("infinity"), Atom("neg_infinity"), 1],
                    np.float64, "x").tolist()[1:] == [math.inf, -math.inf, 1.0]


def test_utf8_and_latin1_atom_tags():
    name = "ünï".encode()
    assert decode(b"\x83\x77" + bytes([len(name)]) + name) == "ünï"  # 119 SMALL_ATOM_UTF8
    assert decode(b"\x83\x76" + struct.pack(">H", len(name)) + name) == "ünï"  # 118 ATOM_UTF8
    assert decode(b"\x83\x64\x00\x03\xe9t\xe9") == "été"  # 100 ATOM_EXT, Latin-1
    assert decode(b"\x83\x73\x02ok") == Atom("ok")  # 115 SMALL_ATOM_EXT
    assert decode(b"\x83\x64\x00\x04true") is True
    assert decode(b"\x83\x77\x03nil") is None
    assert encode(Atom("a" * 200)).startswith(b"\x83\x77\xc8")
    with pytest.raises(EncodeError, match="at most 255"):
        encode(Atom("a" * 256))


def test_erlang_py_encodings_decode_to_our_mapping():
    E = erlang
    term = (E.OtpErlangAtom("C"), 7, E.OtpErlangAtom(b"latin"), E.OtpErlangBinary(b"bin"),
            [1.5, 2**70], {E.OtpErlangAtom("k"): E.OtpErlangList([1, 2])})
    assert decode(E.term_to_binary(term)) == \
        (Atom("C"), 7, Atom("latin"), b"bin", [1.5, 2**70], {Atom("k"): [1, 2]})
    # erlang-py writes a Python bytes as a charlist (STRING_EXT): we read a list of ints.
    assert decode(E.term_to_binary(b"abc")) == [97, 98, 99]
    assert decode(E.term_to_binary([1, 2, 3], compressed=True)) == [1, 2, 3]


def test_erlang_py_reads_what_we_write():
    data = encode((Atom("r"), 3, {"key": [1, -2**40, 0.25]}))
    out = erlang.binary_to_term(data)
    assert out[0] == erlang.OtpErlangAtom("r") and out[1] == 3
    (key, value), = out[2].items()
    assert key.value == b"key" and value == [1, -2**40, 0.25]


def test_compressed_terms_and_their_limits():
    payload = encode([0.5] * 1000)
    body = payload[1:]
    compressed = b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body)
    assert decode(compressed) == [0.5] * 1000
    with pytest.raises(DecodeError, match="above the limit"):
        decode(compressed, max_inflated_bytes=100)
    lying = b"\x83P" + struct.pack(">I", len(body) - 1) + zlib.compress(body)
    with pytest.raises(DecodeError, match="corrupt"):
        decode(lying)
    with pytest.raises(DecodeError, match="corrupt"):
        decode(b"\x83P\x00\x00\x00\x10garbage")


def test_improper_list_refused():
    data = erlang.term_to_binary(erlang.OtpErlangList([1, 2, 3], improper=True))
    with pytest.raises(DecodeError, match="improper list"):
        decode(data)


@pytest.mark.parametrize("data, problem", [
    (b"", "empty frame"),
    (b"\x82a\x01", "version byte 131"),
    (b"\x83a", "truncated"),
    (b"\x83l\x00\x00\x00\x05a\x01", "truncated"),
    (b"\x83m\x00\x00\x00\x09abc", "truncated"),
    (b"\x83a\x01\x00", "unread byte"),
    (b"\x83\xff", "unknown term tag 255"),
    (b"\x83M\x00\x00\x00\x01\x03\xe0", "bit string"),
    (b"\x83X\x77\x01n\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00", "pid"),
    (b"\x83t\x00\x00\x00\x01ja\x01", "map key"),
    (b"\x83w\x02\xff\xfe", "UTF-8"),
    (b"\x83" + b"l\x00\x00\x00\x01" * 5000 + b"j" * 5000, "nested too deeply"),
])
def test_malformed_terms_are_refused_with_a_reason(data, problem):
    with pytest.raises(DecodeError, match=problem):
        decode(data)


def test_call_id_is_recovered_from_a_broken_call():
    call = encode((Atom("C"), 42, Atom("bridge.api"), Atom("ping"), [1]))
    assert decode_call_id(call[:20]) == 42
    assert decode_call_id(b"\x83a\x01") is None
    assert decode_call_id(b"") is None


def test_numpy_values_encode():
    assert decode(encode(np.float32(0.5))) == 0.5
    assert decode(encode(np.int64(-3))) == -3
    assert decode(encode(np.bool_(True))) is True
    tensor = decode(encode(np.arange(6, dtype=np.float32).reshape(2, 3)))
    assert tensor[:3] == (Atom("tensor"), Atom("f32"), (2, 3))
    np.testing.assert_array_equal(tensor_to_array(tensor), np.arange(6).reshape(2, 3))
    with pytest.raises(EncodeError, match="complex64"):
        encode(np.zeros(2, dtype=np.complex64))
    with pytest.raises(EncodeError, match="set"):
        encode({1, 2})


def test_tensor_terms():
    data = np.array([1.0, -2.0], dtype="<f8").tobytes()
    array = as_array((Atom("tensor"), Atom("f64"), (2,), data), np.float32, "obs")
    assert array.dtype == np.float32 and array.tolist() == [1.0, -2.0]
    with pytest.raises(ValueError, match="dtype :f16 is not one of"):
        tensor_to_array((Atom("tensor"), Atom("f16"), (2,), data))
    with pytest.raises(ValueError, match="needs 24 data bytes, got 16"):
        tensor_to_array((Atom("tensor"), Atom("f64"), (3,), data))
    with pytest.raises(ValueError, match="shape must be a tuple"):
        tensor_to_array((Atom("tensor"), Atom("f64"), (-2,), data))


def test_normalisation_accepts_every_text_form():
    class ErlPortAtom(bytes):
        pass

    for value in ("abc", Atom("abc"), b"abc", ErlPortAtom(b"abc"), [97, 98, 99]):
        assert as_text(value, "x") == "abc" and type(as_text(value, "x")) is str
    with pytest.raises(ValueError, match="x must be text"):
        as_text(3, "x")
    assert as_bool(ErlPortAtom(b"true"), "g") is True
    with pytest.raises(ValueError, match="g must be true or false, got 1"):
        as_bool(1, "g")
    with pytest.raises(ValueError, match="n must be an integer"):
        as_int(True, "n")
    with pytest.raises(ValueError, match="n must be an integer"):
        as_int(1.0, "n")
    assert as_float(Atom("neg_infinity"), "r") == -math.inf
    assert as_mapping([(ErlPortAtom(b"a"), 1)], "m") == {"a": 1}
    assert as_mapping(ErlPortAtom(b"nil"), "m") == {}
    with pytest.raises(ValueError, match="unknown key 'b' in opts: allowed keys are a"):
        as_options({Atom("b"): 1}, ("a",), "opts")


def test_as_array_refuses_what_is_not_numbers():
    with pytest.raises(ValueError, match="non-ragged"):
        as_array([[1, 2], [3]], np.float32, "obs")
    with pytest.raises(ValueError, match="every element of obs must be a number, got b'x'"):
        as_array([1.0, b"x"], np.float32, "obs")
    with pytest.raises(ValueError, match="obs must be a number, a list"):
        as_array(b"1234", np.float32, "obs")
    with pytest.raises(ValueError, match="must hold integers"):
        as_array([1.5], np.int64, "action")


def test_to_builtin_gives_exact_types_and_refuses_non_finite():
    out = to_builtin({Atom("a"): np.float32(1.5), "b": np.arange(2), "c": (np.bool_(True),)})
    assert out == {"a": 1.5, "b": [0, 1], "c": (True,)}
    assert [type(k) for k in out] == [str, str, str]
    assert type(out["a"]) is float and type(out["b"][0]) is int and type(out["c"][0]) is bool
    with pytest.raises(ValueError, match=r"result\['loss'\] is nan"):
        to_builtin({"loss": math.nan})


ERL_TERMS = '[{c, 1, <<"bin">>, [1.5, -7, 100000000000000000000], #{k => nil}, true, ' \
            '\'ünï\', "chars", [], {}, 3.0e300}]'


@pytest.mark.skipif(shutil.which("erl") is None, reason="needs a real erl")
def test_terms_written_and_read_by_a_real_erl():
    """erl encodes (minor_version 1, as the Elixir client does) and decodes our output."""
    ours = encode([(Atom("c"), 1, b"bin", [1.5, -7, 10**20], {Atom("k"): None}, True,
                    Atom("ünï"), [99, 104, 97, 114, 115], [], (), 3.0e300)])
    script = (f"T = {ERL_TERMS}, "
              "io:format(\"~s~n\", [[integer_to_list(B) ++ \",\" || "
              "B <- binary_to_list(term_to_binary(T, [{minor_version, 1}]))]]), "
              f"Ours = list_to_binary([{','.join(map(str, ours))}]), "
              "io:format(\"~p~n\", [binary_to_term(Ours) =:= T]), halt().")
    out = subprocess.run(["erl", "-noshell", "-eval", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    theirs = bytes(int(b) for b in out[0].split(",") if b)
    assert decode(theirs) == [(Atom("c"), 1, b"bin", [1.5, -7, 10**20], {Atom("k"): None},
                               True, Atom("ünï"), [99, 104, 97, 114, 115], [], (), 3.0e300)]
    assert out[1] == "true"
