"""One checkpoint format for every way in: a msgpack file, written atomically.

File = msgpack map {"format": "dqn_bridge.checkpoint", "version": 1, "crc32": int, "body": bytes}
where body is a msgpack map holding the config, online and target params, optimizer state,
replay contents, cursor and pending n-step queues, the numpy RNG state, the fused-step memory
(last observation and action per slot, and the params the next step acts with) and the
step/episode/update counters. Arrays are stored as {dtype, shape, data} with
little-endian data; the pytree structure is rebuilt from the config, so nothing in the file
is ever executed or unpickled.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import msgpack
import numpy as np

from bridge import network

FORMAT = "dqn_bridge.checkpoint"
VERSION = 1


def _pack_array(x: Any) -> dict[str, Any]:
    arr = np.asarray(x)
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}


def _unpack_array(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(d["data"], np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def _pack_tree(tree: Any) -> list[dict[str, Any]]:
    return [_pack_array(leaf) for leaf in jax.tree.leaves(tree)]


def _as_pairs(tree: Any, agent: Any) -> Any:
    """`tree` with every flat params-sized array (the networks, the optimizer's moments)
    viewed as per-layer (weight, bias) pairs: the arrays a checkpoint stores, as the
    format has always stored them."""
    size = len(agent.flat_params)
    return jax.tree.map(lambda x: network.unflatten(np.asarray(x), agent.layout) if np.shape(x) == (size,) else x,
                        tree)


def _as_flat(like: Any, pairs: Any, agent: Any) -> Any:
    """The inverse of `_as_pairs`, shaped like `like` (a flat tree)."""
    size = len(agent.flat_params)
    return jax.tree.map(lambda x, p: network.flatten(p) if np.shape(x) == (size,) else p, like, pairs)


def _unpack_tree(like: Any, packed: list[dict[str, Any]], what: str) -> Any:
    leaves, treedef = jax.tree.flatten(like)
    if len(leaves) != len(packed):
        raise ValueError(f"checkpoint {what} has {len(packed)} arrays, the config needs {len(leaves)}")
    restored = []
    for leaf, p in zip(leaves, packed):
        arr = _unpack_array(p)
        if arr.shape != np.shape(leaf) or arr.dtype != np.asarray(leaf).dtype:
            raise ValueError(f"checkpoint {what} holds an array {arr.dtype}{list(arr.shape)} where the config needs "
                             f"{np.asarray(leaf).dtype}{list(np.shape(leaf))}")
        restored.append(jnp.asarray(arr))
    return jax.tree.unflatten(treedef, restored)


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    # PCG64 state holds 128-bit integers, beyond msgpack's range: keep them as decimal text.
    s = rng.bit_generator.state
    return {"state": str(s["state"]["state"]), "inc": str(s["state"]["inc"]),
            "has_uint32": s["has_uint32"], "uinteger": s["uinteger"]}


def _restore_rng(d: dict[str, Any]) -> np.random.Generator:
    bg = np.random.PCG64()
    bg.state = {"bit_generator": "PCG64", "state": {"state": int(d["state"]), "inc": int(d["inc"])},
                "has_uint32": d["has_uint32"], "uinteger": d["uinteger"]}
    return np.random.Generator(bg)


def save(agent: Any, path: str | os.PathLike) -> None:
    """Write `agent` to `path` atomically: a temporary file, fsync, rename, fsync of the folder."""
    body = msgpack.packb({
        "config": agent.config.to_dict(),
        "params": _pack_tree(_as_pairs(agent.state.params, agent)),
        "target_params": _pack_tree(_as_pairs(agent.state.target_params, agent)),
        "opt_state": _pack_tree(_as_pairs(agent.state.opt_state, agent)),
        "counters": {"env_steps": agent.env_steps, "episodes": agent.episodes, "updates": agent.updates,
                     "vector_steps": agent.vector_steps},
        "replay": agent.replay.state_dict(),
        "rng": _rng_state(agent.rng),
        "prev": [[slot, agent.prev_obs[slot].tobytes(), agent.prev_action[slot]] for slot in sorted(agent.prev_obs)],
        # the params the next `step` acts with (one round behind the online params)
        "acting_params": np.asarray(agent.acting_params, np.float32).tobytes(),
    }, use_bin_type=True)
    blob = msgpack.packb({"format": FORMAT, "version": VERSION, "crc32": zlib.crc32(body), "body": body},
                         use_bin_type=True)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The checked body of a checkpoint file; ValueError for anything that is not one."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read checkpoint {path!r}: {exc.strerror}") from None
    try:
        outer = msgpack.unpackb(raw, raw=False)
    except Exception:
        outer = None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a dqn_bridge checkpoint (truncated, or a foreign file)")
    if outer.get("version") != VERSION:
        raise ValueError(f"checkpoint {path!r} has format version {outer.get('version')!r}; "
                         f"this dqn_bridge reads version {VERSION}")
    body = outer.get("body")
    if not isinstance(body, bytes) or zlib.crc32(body) != outer.get("crc32"):
        raise ValueError(f"checkpoint {path!r} is corrupt (checksum mismatch)")
    return msgpack.unpackb(body, raw=False)


def load(path: str | os.PathLike) -> Any:
    """An Agent restored from `path`, ready to continue exactly where it was saved."""
    from bridge.agent import Agent
    from bridge.learner import TrainState

    data = read(path)
    try:
        agent = Agent(data["config"])
        fresh = agent.state

        def restore(like: Any, field: str, what: str) -> Any:
            return _as_flat(like, _unpack_tree(_as_pairs(like, agent), data[field], what), agent)

        agent.set_state(TrainState(
            restore(fresh.params, "params", "params"),
            restore(fresh.target_params, "target_params", "target params"),
            restore(fresh.opt_state, "opt_state", "optimizer state"),
            jnp.asarray(data["counters"]["updates"], jnp.int32),
        ))
        agent.env_steps = int(data["counters"]["env_steps"])
        agent.episodes = int(data["counters"]["episodes"])
        agent.updates = int(data["counters"]["updates"])
        agent.vector_steps = int(data["counters"]["vector_steps"])
        agent.replay.load_state_dict(data["replay"])
        agent.rng = _restore_rng(data["rng"])
        for slot, obs, action in data["prev"]:
            agent.prev_obs[int(slot)] = np.frombuffer(obs, np.float32).copy()
            agent.prev_action[int(slot)] = int(action)
        if "acting_params" in data:  # absent from checkpoints of earlier versions: act with params
            acting = np.frombuffer(data["acting_params"], np.float32)
            if acting.shape != agent.flat_params.shape:
                raise ValueError(f"checkpoint {os.fspath(path)!r} has {acting.size} acting params; its "
                                 f"network has {agent.flat_params.size}")
            agent.acting_params = jnp.asarray(acting)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint {os.fspath(path)!r} is missing a field or has a wrong type: {exc}") from None
    return agent
