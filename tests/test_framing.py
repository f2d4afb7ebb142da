"""Packet-4 framing over real pipes."""
from __future__ import annotations

import os
import struct
import threading
import time

import pytest

from bridge.protocol import Atom, FrameError, FrameReader, FrameTooLarge, frame
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


def _thread_cpu_seconds(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads thread CPU times from /proc")
def test_the_server_sleeps_instead_of_spinning_after_a_reply_with_follow_up_work():
    """A lane reply with follow-up work (a training round) is not followed by a spin: the
    round's device threads need the CPUs. A plain reply is. Each reply is followed by a
    0.3 s pause of the client; the server thread's CPU time over it tells spin from sleep."""
    from bridge.protocol import decode, encode
    from bridge.protocol.server import Server

    followed = []

    def lane(payload: bytes):
        call = decode(payload)
        reply = encode((Atom("r"), call[1], call[3]))
        return (reply, lambda: followed.append(call[1])) if call[3] == Atom("then") else reply

    to_server, from_client = os.pipe()
    to_client, from_server = os.pipe()
    server = Server({}, "m", to_server, from_server, fast_reply=lane, spin_seconds=0.3)
    ids = {}
    thread = threading.Thread(target=lambda: (ids.setdefault("tid", threading.get_native_id()),
                                              server.serve()), daemon=True)
    thread.start()
    replies = FrameReader(to_client)
    spent = {}
    try:
        for call_id, kind in enumerate(["plain", "then", "plain", "then"]):
            os.write(from_client, frame(encode((Atom("C"), call_id, Atom("m"), Atom(kind), []))))
            assert decode(replies.read()) == (Atom("r"), call_id, Atom(kind))
            before = _thread_cpu_seconds(ids["tid"])
            time.sleep(0.3)
            spent.setdefault(kind, []).append(_thread_cpu_seconds(ids["tid"]) - before)
    finally:
        os.close(from_client)
        thread.join(10)
        for fd in (to_server, from_server, to_client):
            os.close(fd)
    assert followed == [1, 3]
    assert max(spent["then"]) < 0.03, spent  # asleep in read()
    assert min(spent["plain"]) > 0.05, spent  # spinning (it yields, so a busy machine gets less)
