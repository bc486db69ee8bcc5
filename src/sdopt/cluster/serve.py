"""`sdopt serve ARTIFACT --ray`: the same FastAPI app as `sdopt serve`, as a Ray Serve deployment.

Each replica loads the artifact once (by path: it must be on a filesystem every node sees) and runs
the app with its own worker, so batching, the queue limit and its 429, auth, body limits and every API
hold per replica. Ray Serve's proxy spreads requests over the replicas; every response names the
replica that answered (``X-Sdopt-Replica``). Jobs made through the asynchronous jobs API (and
AUTOMATIC1111's /progress) live on the replica that made them: with replicas, the synchronous
endpoints are the ones to use.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdopt.cluster.connect import cluster, ray_module
from sdopt.errors import SdoptError, exception_line
from sdopt.serve.settings import ServeSettings

DEPLOYMENT = "sdopt"
# How many requests Ray Serve lets into one replica at once, past what its own queue holds: the replica's
# app then answers the overflow itself with an explicit 429 (Retry-After), instead of Ray holding it in its proxy.
OVERFLOW_SEEN_BY_APP = 8


@dataclass(frozen=True)
class Scaling:
    replicas: int | None = None  # a fixed count
    autoscale: tuple[int, int] | None = None  # (min, max): Ray Serve's autoscaler on ongoing requests
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0

    def __post_init__(self):
        if self.replicas is not None and self.autoscale is not None:
            raise SdoptError("--replicas and --autoscale are either-or: a fixed count, or MIN:MAX for the autoscaler")
        if self.replicas is not None and self.replicas < 1:
            raise SdoptError(f"--replicas {self.replicas}: give 1 or more")
        if self.autoscale is not None and not (0 <= self.autoscale[0] <= self.autoscale[1] and self.autoscale[1] >= 1):
            raise SdoptError(f"--autoscale {self.autoscale[0]}:{self.autoscale[1]}: give MIN:MAX with 0 <= MIN <= MAX and MAX >= 1")
        if not (0 < self.cpus_per_replica < math.inf and 0 <= self.gpus_per_replica < math.inf):  # nan too: Ray's ValueError
            raise SdoptError("--cpus-per-replica must be positive and --gpus-per-replica 0 or more")

    def deployment_options(self, settings: ServeSettings) -> dict[str, Any]:
        options: dict[str, Any] = {
            "name": DEPLOYMENT,
            "ray_actor_options": {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_replica},
            "max_ongoing_requests": settings.max_queue + settings.max_batch + OVERFLOW_SEEN_BY_APP,
        }
        if self.autoscale is not None:
            low, high = self.autoscale
            options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high, "initial_replicas": max(low, 1),
                                             "target_ongoing_requests": max(settings.max_batch, 1)}
        else:
            options["num_replicas"] = self.replicas or 1
        return options


def parse_autoscale(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise SdoptError(f"--autoscale {text!r}: give MIN:MAX replicas, like 1:4")
    return int(low), int(high)


class Replica:
    """One replica: holds what to load; Ray Serve calls __serve_build_asgi_app__ once the actor is up."""

    def __init__(self, artifact: str, settings: ServeSettings, load_options: dict[str, Any]):
        self.artifact, self.settings, self.load_options = artifact, settings, load_options

    def __serve_build_asgi_app__(self):
        import sdopt
        from ray import serve

        from sdopt.serve.server import build, model_name

        self.pipeline = sdopt.load(self.artifact, **self.load_options)
        replica = serve.get_replica_context().replica_id.unique_id
        return build(self.pipeline, self.settings, model_name(self.artifact, self.settings), replica=replica)


def application(artifact: str, settings: ServeSettings, load_options: dict[str, Any], scaling: Scaling):
    """The Ray Serve application (bound, not yet running): serve.run() it on a connected cluster."""
    ray_module()
    from ray import serve

    ingress = serve.ingress()(Replica)
    return serve.deployment(**scaling.deployment_options(settings))(ingress).bind(artifact, settings, load_options)


def start(artifact: str, settings: ServeSettings, load_options: dict[str, Any], scaling: Scaling) -> None:
    """Deploy on the connected cluster and wait until every replica answers (raises naming the replica's error)."""
    from ray import serve

    serve.start(http_options={"host": settings.host, "port": settings.port})
    try:
        serve.run(application(artifact, settings, load_options, scaling), name=DEPLOYMENT, route_prefix="/")
    except Exception as exc:  # noqa: BLE001 - Ray wraps a replica's failure to start (a bad artifact) in its own types
        serve.shutdown()
        raise SdoptError(f"the replicas did not start: {exception_line(exc, last=True)}") from None


def serve_on_ray(artifact: str, settings: ServeSettings, load_options: dict[str, Any], scaling: Scaling, address: str | None) -> None:
    """`sdopt serve --ray`: deploy, say where, and keep serving until Ctrl-C."""
    with cluster(address):
        from ray import serve

        count = f"{scaling.autoscale[0]}..{scaling.autoscale[1]} replicas (autoscaled)" if scaling.autoscale else f"{scaling.replicas or 1} replica(s)"
        print(f"starting {count} of {artifact} on Ray ...", file=sys.stderr)
        signal.signal(signal.SIGTERM, _stop)  # a service manager's stop: the same clean shutdown as Ctrl-C (Ray's own handler only dumps a stack)
        try:
            start(artifact, settings, load_options, scaling)
            from sdopt.serve.server import say_safety_checker

            say_safety_checker(Path(artifact))
            print(f"serving on http://{settings.host}:{settings.port}/ through Ray Serve, {count}; Ctrl-C stops it", file=sys.stderr)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            print("stopping the replicas ...", file=sys.stderr)
            serve.shutdown()


def _stop(signum, frame):
    raise KeyboardInterrupt
