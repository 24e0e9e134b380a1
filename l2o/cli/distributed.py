"""Several processes, e.g. one per host, as one JAX runtime (multi-controller SPMD): every process
runs the same command, `tasks.sharding` splits populations over the devices of all of them, and
only process 0 writes.

A command opts in with two calls, before it touches JAX:

    add_distributed_flags(parser)      # --coordinator HOST:PORT --num-processes N --process-id I
    ...
    initialize(args)                   # no-op for one process; else joins the others

then writes files only `if is_writer()` (or through `on_writer`, which stops every process
when process 0's checks fail). The flags default to the environment variables
`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`.

`jax.distributed.initialize` aborts the whole process (no Python exception) when a peer never
joins. So the processes first meet on the coordinator's port in plain Python: each announces
its id to process 0, which names the ids still missing when the timeout expires, and every
process ends with one line on stderr and exit code 2 (a `UserError`). Only then is JAX started,
under a watchdog that reports and exits with code 2 before JAX's own (longer) timeout aborts.
CPU collectives between processes use gloo.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from l2o.io import UserError

# JAX is imported inside the functions that use it, so that the command line can build its
# parser (`add_distributed_flags`) without loading JAX.

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
DEFAULT_TIMEOUT = 300.0
JAX_GRACE_S = 30  # JAX's own timeout, which aborts the process, is this much longer than ours
_HELLO = "l2o-join"
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where process 0 listens, how many processes take part, which one this is."""

    coordinator: str
    num_processes: int
    process_id: int
    timeout: float = DEFAULT_TIMEOUT

    @property
    def host(self) -> str:
        return self.coordinator.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.coordinator.rsplit(":", 1)[1])


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """Add `--coordinator`, `--num-processes`, `--process-id` and `--init-timeout`."""
    group = parser.add_argument_group(
        "several processes",
        "run the same command once per process (e.g. one per host), each with its own "
        "--process-id; only process 0 writes files",
    )
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help=f"address of process 0 (default ${ENV_COORDINATOR})")  # fmt: skip
    group.add_argument("--num-processes", metavar="N",
                       help=f"processes in all (default ${ENV_NUM_PROCESSES}, else 1)")  # fmt: skip
    group.add_argument("--process-id", metavar="I",
                       help=f"this process, 0 .. N-1 (default ${ENV_PROCESS_ID})")  # fmt: skip
    group.add_argument("--init-timeout", metavar="SECONDS", type=float, default=DEFAULT_TIMEOUT,
                       help="how long to wait for every process to join (default 300)")  # fmt: skip


def _integer(name: str, text: Any, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be an integer, got {text!r}") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise UserError(f"{name} must be {bound}, got {value}")
    return value


def cluster_from_args(args: argparse.Namespace) -> Cluster | None:
    """The Cluster of the flags (else the environment); None for a single process."""

    def flag(name: str, env: str):
        value = getattr(args, name, None)
        return os.environ.get(env) if value is None else value

    coordinator = flag("coordinator", ENV_COORDINATOR)
    num = flag("num_processes", ENV_NUM_PROCESSES)
    pid = flag("process_id", ENV_PROCESS_ID)
    timeout = getattr(args, "init_timeout", DEFAULT_TIMEOUT)
    num = 1 if num is None else _integer("--num-processes", num, 1)
    if num == 1:
        return None
    if not coordinator:
        raise UserError(
            f"--num-processes {num} needs --coordinator HOST:PORT (process 0's address)"
        )
    host, sep, port = str(coordinator).rpartition(":")
    if not sep or not host.strip("[]"):
        raise UserError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    _integer("the port of --coordinator", port, 1, 65535)
    if pid is None:
        raise UserError(f"--num-processes {num} needs --process-id (0 .. {num - 1})")
    pid = _integer("--process-id", pid, 0, num - 1)
    if not (timeout > 0 and np.isfinite(timeout)):
        raise UserError(f"--init-timeout must be a positive number of seconds, got {timeout}")
    return Cluster(str(coordinator), num, pid, float(timeout))


def _say(text: str) -> None:
    print(f"l2o: {text}", file=sys.stderr, flush=True)


def _ids(ids) -> str:
    ids = sorted(ids)
    return f"process {ids[0]}" if len(ids) == 1 else "processes " + ", ".join(map(str, ids))


def _read_line(conn: socket.socket, deadline: float) -> str:
    """One line from `conn` ('' on EOF); TimeoutError after `deadline`."""
    data = b""
    while not data.endswith(b"\n"):
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = conn.recv(256)
        if not chunk:
            return ""
        data += chunk
        if len(data) > 4096:
            return ""
    return data.decode(errors="replace").strip()


def _gather(cluster: Cluster) -> None:
    """Process 0: wait until processes 1 .. N-1 have announced themselves, then release them."""
    n, t = cluster.num_processes, cluster.timeout
    deadline = time.monotonic() + t
    try:
        if socket.has_dualstack_ipv6():
            server = socket.create_server(
                ("", cluster.port), family=socket.AF_INET6, dualstack_ipv6=True
            )
        else:
            server = socket.create_server(("", cluster.port))
    except OSError as e:
        message = f"cannot listen on port {cluster.port} of --coordinator: {e.strerror}"
        raise UserError(message) from None
    joined: dict[int, socket.socket] = {}
    try:
        server.settimeout(0.2)
        while len(joined) < n - 1:
            if time.monotonic() > deadline:
                missing = _ids(set(range(1, n)) - set(joined))
                message = (
                    f"{missing} of {n} did not join the coordinator {cluster.coordinator} "
                    f"within {t:g} s; start it with --process-id and the same "
                    f"--coordinator and --num-processes"
                )
                for conn in joined.values():
                    with contextlib.suppress(OSError):
                        conn.sendall(f"error {message}\n".encode())
                raise UserError(message)
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            try:
                words = _read_line(conn, time.monotonic() + 5).split()
            except OSError:
                words = []
            if len(words) != 3 or words[0] != _HELLO or not all(w.isdigit() for w in words[1:]):
                conn.close()  # not one of ours
                continue
            pid, peer_n = int(words[1]), int(words[2])
            problem = None
            if peer_n != n:
                problem = (
                    f"process 0 was started with --num-processes {n}, process {pid} with {peer_n}"
                )
            elif not 0 < pid < n or pid in joined:
                problem = f"process id {pid} is taken or out of range (1 .. {n - 1})"
            if problem:
                with contextlib.suppress(OSError):
                    conn.sendall(f"error {problem}\n".encode())
                conn.close()
                if peer_n != n:
                    raise UserError(problem)
                continue
            joined[pid] = conn
            remaining = set(range(1, n)) - set(joined)
            if remaining:
                _say(f"process {pid} joined; waiting for {_ids(remaining)}")
        for conn in joined.values():
            conn.sendall(b"go\n")
        for conn in joined.values():  # let the peers close first, so the port is free for JAX
            with contextlib.suppress(OSError):
                _read_line(conn, time.monotonic() + 5)
    finally:
        for conn in joined.values():
            conn.close()
        server.close()


def _join(cluster: Cluster) -> None:
    """Process I > 0: announce this process to process 0 and wait until every process has."""
    t, address = cluster.timeout, cluster.coordinator
    deadline = time.monotonic() + t
    while True:
        try:
            conn = socket.create_connection((cluster.host, cluster.port), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(
                    f"the coordinator (process 0) at {address} did not answer within {t:g} s; "
                    f"start it with --process-id 0, or check --coordinator"
                ) from None
            time.sleep(0.2)
    with conn:
        n = cluster.num_processes
        conn.sendall(f"{_HELLO} {cluster.process_id} {n}\n".encode())
        try:
            reply = _read_line(conn, deadline + 10)  # process 0 reports its own timeout first
        except OSError:
            reply = "error timeout"
    if reply == "go":
        return
    if reply.startswith("error ") and reply != "error timeout":
        raise UserError(reply.removeprefix("error "))
    raise UserError(
        f"not every one of processes 0 .. {n - 1} joined the coordinator {address} "
        f"within {t:g} s (process 0 {'stopped' if not reply else 'did not answer'})"
    )


@contextlib.contextmanager
def _watchdog(seconds: float, message: str):
    """Print `message` and exit with code 2 unless the block ends within `seconds`."""
    done = threading.Event()

    def watch():
        if not done.wait(seconds):
            print(f"l2o: error: {message}", file=sys.stderr, flush=True)
            os._exit(2)

    threading.Thread(target=watch, name="l2o-init-watchdog", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def _stop_at_uncaught_errors(pid: int) -> None:
    """End this process right after an uncaught exception's traceback: at a normal exit JAX
    would first wait for the other processes, which wait in a collective for this one."""
    previous = sys.excepthook

    def excepthook(*exc_info):
        previous(*exc_info)
        _say(f"process {pid} stopped on an error; the others stop when they notice")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)

    sys.excepthook = excepthook


def initialize(args: argparse.Namespace) -> Cluster | None:
    """Join this process to the others of `args` (see `add_distributed_flags`), then start
    JAX's distributed runtime: afterwards `jax.devices()` holds every process's devices.

    A single process (no flags, `--num-processes 1`) returns None and changes nothing. Call it
    before any JAX computation. A process that does not join within `--init-timeout` ends every
    waiting process with a one-line error naming it (exit code 2).
    """
    cluster = cluster_from_args(args)
    if cluster is None:
        return None
    n, pid, t = cluster.num_processes, cluster.process_id, cluster.timeout
    address = cluster.coordinator
    if pid == 0:
        _say(f"process 0 of {n}: coordinator at {address}; waiting up to {t:g} s for "
             f"{_ids(range(1, n))} to join")  # fmt: skip
        _gather(cluster)
    else:
        _say(f"process {pid} of {n}: joining the coordinator (process 0) at {address}; "
             f"waiting up to {t:g} s for processes 0 .. {n - 1}")  # fmt: skip
        _join(cluster)
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    message = (
        f"JAX's distributed runtime did not start within {t:g} s (coordinator {address}, "
        f"processes 0 .. {n - 1}); a process stopped after joining"
    )
    with _watchdog(t, message):
        jax.distributed.initialize(
            address,
            num_processes=n,
            process_id=pid,
            cluster_detection_method="deactivate",
            initialization_timeout=int(t) + JAX_GRACE_S,
        )
        jax.devices()  # the processes exchange their devices here
    _stop_at_uncaught_errors(pid)
    here = jax.local_device_count()
    _say(f"process {pid} of {n}: {jax.device_count()} devices in all, {here} here")
    return cluster


def is_writer() -> bool:
    """Whether this process writes files and reports: process 0 (or the only one)."""
    import jax

    return jax.process_index() == 0


def on_writer(check: Callable[[], T]) -> T | None:
    """`check()` on process 0 (None elsewhere); a UserError it raises stops every process, so
    no process is left waiting for a peer that quit."""
    import jax

    result, error = None, None
    if is_writer():
        try:
            result = check()
        except UserError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if int(failed) and error is None:
            raise UserError("process 0 stopped with an error (see its output)")
    if error is not None:
        raise error
    return result


def _is_key(x) -> bool:
    import jax

    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def broadcast_from_writer(tree: T) -> T:
    """Process 0's value of `tree` on every process (e.g. a checkpoint only it has read); every
    process passes a tree of the same structure, shapes and dtypes."""
    import jax

    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(tree)
    data = [np.asarray(jax.random.key_data(x) if _is_key(x) else x) for x in leaves]
    data = multihost_utils.broadcast_one_to_all(data)
    out = [
        jax.random.wrap_key_data(d, impl=jax.random.key_impl(x)) if _is_key(x) else np.asarray(d)
        for d, x in zip(data, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)
