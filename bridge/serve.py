"""`python -m bridge serve`: answer `bridge.api` calls from a BEAM port.

By default frames arrive on fd 3 and replies go to fd 4, as a port opened with
`:nouse_stdio` arranges, so nothing printed on stdout/stderr (by us, JAX or XLA) can ever
corrupt a frame. With --use-stdio frames use stdin/stdout instead; the real stdout is then
moved to a private descriptor and fd 1 points at stderr, which keeps the same guarantee.

Exit status: 0 when the input ends (the BEAM closed the port), 2 when the input breaks
inside a frame or the descriptors are missing, 3 when the parent process dies.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

from bridge.protocol import DEFAULT_MAX_FRAME_BYTES, Server, watch_parent
from bridge.threads import DEFAULT_NICE, available_cpus, check_cpu, check_settings, pin_main, start_backend

MODULE = "bridge.api"
DEFAULT_SPIN_US = 200.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--use-stdio", action="store_true",
                        help="read frames on stdin and write them on stdout instead of fds 3/4 "
                             "(for a port opened without :nouse_stdio)")
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES,
                        metavar="N",
                        help="longest accepted frame; a longer one gets an error reply "
                             f"(default {DEFAULT_MAX_FRAME_BYTES} = 64 MiB)")
    parser.add_argument("--spin-us", type=float, default=None, metavar="US",
                        help="after each reply, poll for the next call this many µs before "
                             "sleeping: a control loop's next call then finds the server "
                             "awake instead of paying for an idle CPU's wake-up; never after "
                             "a reply whose training round runs next (default "
                             f"{DEFAULT_SPIN_US:g} when the process may run on more than one "
                             "CPU, else 0; 0 turns it off)")
    parser.add_argument("--xla-threads", type=int, default=None, metavar="N",
                        help="worker threads of JAX's CPU backend (default: one fewer than the "
                             "CPUs, at least 1, leaving a CPU to the BEAM; 0: one per CPU)")
    parser.add_argument("--xla-nice", type=int, default=DEFAULT_NICE, metavar="N",
                        help="run those worker threads N nice steps below the thread that "
                             f"answers calls, 0-19 (default {DEFAULT_NICE}; 0: the same priority)")
    parser.add_argument("--main-cpu", type=int, default=None, metavar="CPU",
                        help="run the thread that answers calls on this CPU alone, and JAX's "
                             "workers on the others (mix dqn.train does, keeping the BEAM "
                             "off that CPU; default: where the OS puts them)")
    parser.add_argument("--no-parent-watch", action="store_true",
                        help="keep running when the parent process dies (by default the "
                             "server exits within a second, even mid-computation)")


def spin_seconds(spin_us: float | None) -> float:
    """The spin of `--spin-us` in seconds; by default DEFAULT_SPIN_US, or none on one CPU,
    where the caller could not run while we spin."""
    if spin_us is None:
        return DEFAULT_SPIN_US * 1e-6 if available_cpus() > 1 else 0.0
    if not 0 <= spin_us <= 1e6:
        raise ValueError(f"--spin-us must be between 0 and 1000000, got {spin_us:g}")
    return spin_us * 1e-6


def xla_threads(option: int | None) -> int:
    """The worker threads of `--xla-threads`: by default one fewer than the CPUs, since
    the BEAM driving the server needs one too (see `bridge.threads`)."""
    return max(1, available_cpus() - 1) if option is None else option


def _descriptors(use_stdio: bool) -> tuple[int, int]:
    if use_stdio:
        sys.stdout.flush()
        out_fd = os.dup(1)
        os.dup2(2, 1)  # print() and native writes to fd 1 now land on stderr
        return 0, out_fd
    for fd in (3, 4):
        try:
            os.fstat(fd)
        except OSError:
            raise ValueError(f"fd {fd} is not open: run the server from a BEAM port opened "
                             "with :nouse_stdio (frames on fds 3/4), or pass --use-stdio") from None
        os.set_inheritable(fd, False)  # no child process of ours may hold the port's pipes
    return 3, 4


def functions() -> dict:
    """The allowlist: exactly the names in `bridge.api.__all__`."""
    import bridge.api

    return {name: getattr(bridge.api, name) for name in bridge.api.__all__}


def main(args: argparse.Namespace) -> int:
    if args.max_frame_bytes < 1:
        print(f"error: --max-frame-bytes must be positive, got {args.max_frame_bytes}",
              file=sys.stderr)
        return 2
    try:
        spin = spin_seconds(args.spin_us)
        threads = xla_threads(args.xla_threads)
        check_settings(threads, args.xla_nice, ("--xla-threads", "--xla-nice"))
        if args.main_cpu is not None:
            check_cpu(args.main_cpu, "--main-cpu")
        in_fd, out_fd = _descriptors(args.use_stdio)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.no_parent_watch:
        watch_parent(reply_fd=out_fd, input_fd=in_fd)
    import bridge.api

    start_backend(threads, args.xla_nice)
    if args.main_cpu is not None:
        pin_main(args.main_cpu)
    gc.freeze()  # what startup built (JAX, numpy, the api) is never traced by a collection
    server = Server(functions(), MODULE, in_fd, out_fd, args.max_frame_bytes,
                    fast_reply=bridge.api.fast_reply, spin_seconds=spin)
    return server.serve()
