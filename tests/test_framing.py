"""Packet-4 framing over real pipes."""
from __future__ import annotations

import os
import struct
import threading

import pytest

from bridge.protocol import FrameError, FrameReader, FrameTooLarge, frame
from bridge.protocol.framing import write_all


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_frame_is_big_endian_length_then_payload():
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(b"") == b"\x00\x00\x00\x00"


def test_frames_split_across_writes_and_packed_together(pipe):
    r, w = pipe
    reader = FrameReader(r)
    data = frame(b"first") + frame(b"") + frame(b"x" * 70_000)

    def writer():
        for i in range(0, len(data), 3):  # dribble: headers and bodies arrive in pieces
            os.write(w, data[i:i + 3])
        os.close(w)

    thread = threading.Thread(target=writer)
    thread.start()
    assert reader.read() == b"first"
    assert reader.read() == b""
    assert reader.read() == b"x" * 70_000
    assert reader.read() is None  # clean end between frames
    thread.join()


def test_many_frames_in_one_write(pipe):
    r, w = pipe
    write_all(w, b"".join(frame(bytes([i])) for i in range(200)))
    os.close(w)
    reader = FrameReader(r)
    assert [reader.read() for _ in range(200)] == [bytes([i]) for i in range(200)]
    assert reader.read() is None


@pytest.mark.parametrize("data, where", [
    (b"\x00\x00", "header"),
    (b"\x00\x00\x00\x10abc", "declared length 16"),
])
def test_input_ending_inside_a_frame_is_an_error(pipe, data, where):
    r, w = pipe
    os.write(w, data)
    os.close(w)
    with pytest.raises(FrameError, match=where):
        FrameReader(r).read()


def test_oversized_frame_is_skipped_and_the_stream_stays_in_step(pipe):
    r, w = pipe
    reader = FrameReader(r, max_frame_bytes=100)
    big = b"\x83" + b"z" * 5000

    def writer():
        write_all(w, frame(big) + frame(b"next"))
        os.close(w)

    thread = threading.Thread(target=writer)
    thread.start()
    with pytest.raises(FrameTooLarge, match="frame of 5001 bytes exceeds the limit of 100") as info:
        reader.read()
    assert info.value.prefix == big[:64]
    assert reader.read() == b"next"
    assert reader.read() is None
    thread.join()


def test_oversized_frame_cut_short_is_an_error(pipe):
    r, w = pipe
    os.write(w, struct.pack(">I", 1 << 30) + b"abc")
    os.close(w)
    with pytest.raises(FrameError, match="corrupt frame length"):
        FrameReader(r, max_frame_bytes=10).read()


def test_limit_must_be_positive(pipe):
    with pytest.raises(ValueError, match="max_frame_bytes must be positive"):
        FrameReader(pipe[0], max_frame_bytes=0)


def test_a_spinning_reader_gets_frames_sent_during_and_after_its_spin(pipe):
    """With spin_seconds, a read first polls without sleeping; frames that come while it
    spins, after it gave up (and blocks), or all at once are read alike."""
    import time

    r, w = pipe
    reader = FrameReader(r, spin_seconds=0.002)

    def writer():
        os.write(w, frame(b"at once"))
        time.sleep(0.0005)  # within the spin
        os.write(w, frame(b"during the spin"))
        time.sleep(0.05)  # long after it: the reader is blocked in read()
        os.write(w, frame(b"after the spin")[:3])
        time.sleep(0.01)
        os.write(w, frame(b"after the spin")[3:] + frame(b"a") + frame(b"b"))
        os.close(w)

    thread = threading.Thread(target=writer)
    thread.start()
    got = [reader.read() for _ in range(6)]
    thread.join()
    assert got == [b"at once", b"during the spin", b"after the spin", b"a", b"b", None]


def test_spin_must_not_be_negative(pipe):
    with pytest.raises(ValueError, match="spin_seconds must be >= 0, got -1"):
        FrameReader(pipe[0], spin_seconds=-1)
