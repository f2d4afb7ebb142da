"""dqn_bridge: a JAX DQN agent served to the BEAM over the ErlPort wire protocol."""

import os as _os

__version__ = "0.1.0"

# XLA settings that suit a small network trained one step at a time on the CPU. Each is
# added to XLA_FLAGS unless the user's XLA_FLAGS already name it; XLA reads them when JAX
# first uses its backend, so this runs before any of ours can.
#
# The concurrency-optimized scheduler orders a computation for running its independent
# parts on several threads at once. A DQN train step is ~60 tiny kernels, where the hand-
# offs cost more than they save: without it the step takes ~25% less CPU and wall time
# (2 vCPUs: 160 vs 210 µs a step, pipelined), with bit-identical results.
#
# XLA aborts on a flag it does not know, so they are only added for the jaxlib releases
# they were measured on (0.10 and later); older ones run without them.
XLA_DEFAULTS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)
XLA_DEFAULTS_SINCE = (0, 10)


def _with_defaults(flags: str, jaxlib_version: str | None) -> str:
    try:
        release = tuple(int(part) for part in (jaxlib_version or "").split(".")[:2])
    except ValueError:  # a version we cannot read: add nothing
        return flags
    if release < XLA_DEFAULTS_SINCE:
        return flags
    for flag in XLA_DEFAULTS:
        if flag.split("=", 1)[0] not in flags:
            flags = f"{flags} {flag}".strip()
    return flags


def _jaxlib_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxlib")
    except PackageNotFoundError:
        return None


_os.environ["XLA_FLAGS"] = _with_defaults(_os.environ.get("XLA_FLAGS", ""), _jaxlib_version())
