"""Packet-4 framing: each frame is a 4-byte big-endian length, then that many bytes.

This is what a BEAM port opened with `{:packet, 4}` reads and writes.
"""
from __future__ import annotations

import os
import select
import struct
import time

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "FrameError", "FrameTooLarge", "FrameReader",
           "frame", "write_all"]

DEFAULT_MAX_FRAME_BYTES = 64 << 20
_READ_CHUNK = 1 << 16
_header = struct.Struct(">I")
_unpack_header = _header.unpack_from


class FrameError(Exception):
    """The byte stream cannot be read as frames any more (e.g. it ended inside a frame)."""


class FrameTooLarge(Exception):
    """A frame declared a length above the limit; its bytes were skipped, the stream is
    still in step. `prefix` holds the frame's first bytes (enough to find a call id)."""

    def __init__(self, length: int, limit: int, prefix: bytes):
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes "
                         "(raise it with --max-frame-bytes)")
        self.length = length
        self.limit = limit
        self.prefix = prefix


for _cls in (FrameError, FrameTooLarge):
    _cls.__module__ = "bridge.protocol"


def frame(payload: bytes) -> bytes:
    """The frame carrying `payload`."""
    return _header.pack(len(payload)) + payload


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd` (os.write may write less than asked)."""
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)
    while written < len(data):
        written += os.write(fd, view[written:])


class FrameReader:
    """Reads frames from a file descriptor through one growing buffer.

    `read()` returns the next payload, None at a clean end of input (between frames), and
    raises FrameError if the input ends inside a frame or FrameTooLarge (after skipping
    the frame's bytes) if a frame is longer than `max_frame_bytes`.
    """

    def __init__(self, fd: int, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 spin_seconds: float = 0.0):
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be positive, got {max_frame_bytes}")
        if not spin_seconds >= 0:
            raise ValueError(f"spin_seconds must be >= 0, got {spin_seconds}")
        self.fd = fd
        self.max_frame_bytes = max_frame_bytes
        self.spin_seconds = spin_seconds
        self._buffer = bytearray()
        self._start = 0  # consumed bytes at the front of the buffer
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def _spin(self) -> None:
        """Wait up to `spin_seconds` for input without sleeping, yielding the CPU to
        anything else runnable on it: on a VM, a blocking read that sleeps costs an idle
        CPU's wake-up (tens of µs) when the next call comes, and a control loop sends it
        within microseconds."""
        poll, clock, pause = self._poll.poll, time.perf_counter, os.sched_yield
        deadline = clock() + self.spin_seconds
        while not poll(0) and clock() < deadline:
            pause()

    def _fill(self, need: int, where: str) -> bool:
        """Make `need` unconsumed bytes available; False on EOF before any byte of a frame."""
        while len(self._buffer) - self._start < need:
            chunk = os.read(self.fd, max(_READ_CHUNK, need - (len(self._buffer) - self._start)))
            if not chunk:
                have = len(self._buffer) - self._start
                if have == 0 and where == "header":
                    return False
                raise FrameError(f"input ended inside a frame {where}: needed {need} "
                                 f"bytes, got {have} (a corrupt frame length, or the "
                                 "writer died mid-frame)")
            if self._start and self._start == len(self._buffer):
                self._buffer.clear()
                self._start = 0
            self._buffer += chunk
        return True

    def read(self, spin: bool = True) -> bytes | None:
        """The next payload; `spin=False` skips this read's spin (see `_spin`)."""
        if self._start == len(self._buffer):
            # Nothing buffered: the common case of one call at a time. When one read
            # brings exactly one whole frame, return it without going through the buffer.
            if spin and self.spin_seconds:
                self._spin()
            chunk = os.read(self.fd, _READ_CHUNK)
            n = len(chunk) - 4
            if n >= 0 and _unpack_header(chunk)[0] == n and n <= self.max_frame_bytes:
                return chunk[4:]
            if not chunk:
                return None
            self._buffer.clear()
            self._start = 0
            self._buffer += chunk
        if not self._fill(4, "header"):
            return None
        (length,) = _header.unpack_from(self._buffer, self._start)
        self._start += 4
        if length > self.max_frame_bytes:
            self._skip(length)
        self._fill(length, f"body (declared length {length})")
        start = self._start
        self._start = end = start + length
        payload = bytes(self._buffer[start:end])
        if end == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        elif end > _READ_CHUNK:
            del self._buffer[:end]
            self._start = 0
        return payload

    def _skip(self, length: int) -> None:
        prefix_len = min(length, 64)
        self._fill(prefix_len, f"body (declared length {length})")
        prefix = bytes(self._buffer[self._start:self._start + prefix_len])
        left = length
        while left:
            have = len(self._buffer) - self._start
            if have == 0:
                self._buffer.clear()
                self._start = 0
                self._fill(1, f"body (declared length {length}, {length - left} skipped)")
                continue
            taken = min(have, left)
            self._start += taken
            left -= taken
        del self._buffer[:self._start]
        self._start = 0
        raise FrameTooLarge(length, self.max_frame_bytes, prefix)
