"""Join a Ray cluster, or start a local one: the one place sdopt calls ``ray.init``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from sdopt.errors import SdoptError, require

# A local cluster's object store: bench results (images, latents) and nothing else pass through it.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


def ray_module():
    return require("ray", "ray")


@contextlib.contextmanager
def cluster(address: str | None, local_resources: dict[str, float] | None = None, num_cpus: int | None = None) -> Iterator[dict[str, Any]]:
    """The cluster for the duration of a command: ADDRESS (``ray://host:10001``, ``host:6379`` or ``auto``),
    else the one this process already joined, else a local one started here (and stopped on the way out),
    which is given ``local_resources`` so that profiles asking for a node kind can run on this machine."""
    ray = ray_module()
    started_here = False
    if not ray.is_initialized():
        quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            check_reachable(address)  # before ray.init, which waits minutes on an address nobody listens at
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network at run time
                ray.init(address="local", num_cpus=num_cpus, resources=local_resources or None,
                         object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SdoptError(
                f"cannot {'reach the Ray cluster at ' + address if address else 'start a local Ray cluster'}: {exc}. "
                "Start one with `ray start --head` and pass its address (docs/ray.md), or leave the address out for a local one"
            ) from None
        started_here = True
    try:
        yield describe()
    finally:
        if started_here:
            ray.shutdown()


# Where a Ray address names no port: the client server's (ray://) and the head's GCS (host alone), Ray's defaults.
_DEFAULT_PORTS = {"ray": 10001, "": 6379}
REACH_TIMEOUT_S = 5.0


def check_reachable(address: str) -> None:
    """Refuse an address nothing listens at, in seconds: ray.init retried its GCS connect for minutes there (seen: over
    2 min, then Ray's own traceback). "auto" (this machine's running cluster, found by Ray) is left to Ray."""
    import socket

    if address == "auto":
        return
    scheme, _, rest = address.rpartition("://")
    rest = rest.partition("/")[0]
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1]:6379
    elif ":" in host:
        return  # a bare IPv6 address (its port cannot be told from it): left to Ray
    try:
        port_number = int(port) if port else _DEFAULT_PORTS.get(scheme, 6379)
    except ValueError:
        raise SdoptError(f"--ray {address}: the port {port!r} is not a number; give ray://HOST:10001, HOST:6379 or auto") from None
    try:
        socket.create_connection((host or "127.0.0.1", port_number), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise SdoptError(f"cannot reach the Ray cluster at {address}: nothing answers at {host or '127.0.0.1'}:{port_number} ({exc}). "
                         "Start one with `ray start --head` and pass its address (docs/ray.md), or leave the address out for a local one") from None


def describe() -> dict[str, Any]:
    """What the report says of the cluster: Ray's version, its address, and its nodes' resources."""
    ray = ray_module()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "engine": "ray",
        "ray_version": ray.__version__,
        "address": ray.get_runtime_context().gcs_address,
        "nodes": [{"node_id": n["NodeID"], "ip": n.get("NodeManagerAddress"), "resources": _plain(n.get("Resources", {}))} for n in nodes],
    }


def _plain(resources: dict[str, float]) -> dict[str, float]:
    """A node's resources without Ray's internal per-node markers (node:IP, memory in bytes is kept)."""
    return {k: v for k, v in resources.items() if not k.startswith("node:")}
