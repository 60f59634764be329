"""`aim-icl serve --replicas N`: the single-process server's app as a Ray Serve application.

Each replica loads the model and serves `create_app(ModelService(...), config)` through Serve's FastAPI ingress, so
every route, schema, limit, API-key check, `/health` and `/metrics` is the single-process server's own, per
replica (each response says which one in `x-aim-replica`; every replica's metrics also go to Ray's metrics, tagged
by replica and application: `serve.metrics_mirror`). Ray Serve adds what one process lacks: replicas on
several GPUs and nodes, autoscaling between bounds, replacement of a replica that dies, and a proxy that routes each
request to a replica with room for it. Two things a replica keeps are shared here:
- the Demonstration Bank: every replica reads the shared bank and writes the demos chats bring only to its own
  shard (`bank.layered`); shards are merged into the bank when the server starts and stops;
- named tasks: stored in the shared bank file's task table with the demos they name (`bank.tasks`), which every
  replica reads and brings itself in step with before answering a task request. Without `--bank` a local cluster
  shares a temporary bank file; a remote one needs `--bank` on a filesystem every node reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aim_icl.errors import AIMError, MissingDependency

if TYPE_CHECKING:  # the app module imports FastAPI; this one stays light for the CLI's --help
    from aim_icl.serve.app import ServerConfig

logger = logging.getLogger(__name__)

APP_NAME = "aim-icl"
REPLICA_HEADER = "x-aim-replica"
# warnings and errors only, as the single-process server logs (Ray keeps its full logs under /tmp/ray)
QUIET_LOGS = {"log_level": "WARNING", "enable_access_log": False}


@dataclass(frozen=True)
class ReplicaSpec:
    """What every replica needs to build its service; paths absolute (a replica's working directory differs)."""

    model: str | None  # directory or hub id; None: the embedded world model
    projector: str | None
    device: str  # may be "auto": resolved on the replica's node, like `dtype`
    name: str  # the model name clients see
    bank: str | None  # the shared bank (created by the first replica): demos and tasks; None: not chosen yet
    config: ServerConfig
    temporary_bank: bool = False  # a bank for this run only (no --bank on a local cluster)
    dtype: str = "auto"  # the weights' dtype name
    threads: int = 1  # torch threads per replica on the CPU
    workers: int = 0  # prompt-preparing processes per replica (replicas already share the node's cores)


@dataclass(frozen=True)
class Scaling:
    """Replica count (fixed, or autoscaled between bounds) and what each replica reserves."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self):
        low, high = self.bounds
        if self.replicas < 1 or low < 0 or high < 1 or not low <= self.replicas <= high:
            raise AIMError(
                f"replica bounds must satisfy 0 <= min ({low}) <= replicas ({self.replicas}) <= max ({high}), max >= 1"
            )
        if self.num_cpus < 0 or self.num_gpus < 0 or self.target_ongoing_requests <= 0:
            raise AIMError("--num-cpus, --num-gpus must be >= 0 and --target-ongoing-requests > 0")

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def bounds(self) -> tuple[int, int]:
        """(min, max) replicas; both the fixed count unless autoscaled."""
        low = self.min_replicas if self.min_replicas is not None else self.replicas
        return low, self.max_replicas if self.max_replicas is not None else self.replicas


def deployment_options(scaling: Scaling, config: ServerConfig) -> dict:
    """Ray Serve deployment options: resources, replica count or autoscaling bounds, and the server's limits.

    A replica holds at most what its worker queue holds plus one running batch, so Serve never sends it more than
    that (the rest wait at the proxy, at most `queue_size` of them, then get 503 as the single server's queue does).
    """
    options: dict = {
        "ray_actor_options": {"num_cpus": scaling.num_cpus, "num_gpus": scaling.num_gpus},
        "max_ongoing_requests": config.queue_size + config.max_batch_size,
        "max_queued_requests": config.queue_size,
        "graceful_shutdown_timeout_s": config.timeout_s,
        "logging_config": QUIET_LOGS,
    }
    if scaling.autoscaled:
        low, high = scaling.bounds
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": scaling.replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = scaling.replicas
    return options


class AIMReplica:
    """One Serve replica: the model, its service and the single-process app (built by `__serve_build_asgi_app__`)."""

    def __init__(self, spec: ReplicaSpec):
        import torch
        from ray import serve

        from aim_icl.bank import BankStore, backbone_fingerprint
        from aim_icl.bank.layered import claim_shard, shard_path
        from aim_icl.core.placement import resolve_device, resolve_dtype
        from aim_icl.models import load_aim
        from aim_icl.serve.metrics_mirror import MetricsMirror, ray_gauge
        from aim_icl.serve.service import ModelService

        self.spec = spec
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        device = resolve_device(spec.device)
        if device == "cpu":
            torch.set_num_threads(spec.threads)
        aim = load_aim(spec.model, spec.projector, device=device, dtype=resolve_dtype(spec.dtype, device))
        BankStore(spec.bank, backbone_fingerprint(aim)).close()  # the first replica creates the shared bank
        shard = shard_path(
            spec.bank, self.replica_id
        )  # this replica's own file; the shared bank is read only
        self._claim = claim_shard(shard)
        self.service = ModelService(
            aim,
            shard,
            model_name=spec.name,
            bank_over=spec.bank,
            workers=spec.workers,
            config=spec.config,
            temporary_bank=spec.temporary_bank,
        )
        self._mirror = MetricsMirror(self.service.metrics.registry, ray_gauge).start()

    def __serve_build_asgi_app__(self):
        from aim_icl.serve.app import create_app

        app = create_app(self.service)
        app.add_middleware(TagReplica, replica_id=self.replica_id)
        return app

    def __del__(self):
        """After the app's shutdown closed the bank: release the shard, which a merge may now take."""
        if getattr(self, "_claim", None) is not None:
            self._claim.close()
        if getattr(self, "_mirror", None) is not None:
            self._mirror.set()


class TagReplica:
    """ASGI middleware naming the replica in every response's headers (plain ASGI: no per-request task)."""

    def __init__(self, app, replica_id: str):
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica_id.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, tagged)


def application(spec: ReplicaSpec, scaling: Scaling):
    """The Serve application (bound deployment) that `serve.run` deploys."""
    from ray import serve

    deployment = serve.deployment(name="AIMReplica", **deployment_options(scaling, spec.config))
    return deployment(serve.ingress()(AIMReplica)).bind(spec)


# -- the driver: `aim-icl serve --replicas N` ----------------------------------------------------------------------


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "replicas (Ray Serve; pip install 'aim-icl[cluster]')",
        "With --replicas or --ray-address the server runs as a Ray Serve application: every replica loads the "
        "model and serves the same routes; --bank is then shared: each replica writes the demos chats bring to its "
        "own shard next to it (merged into the bank when the server starts and stops), and tasks with their demos "
        "to the bank itself.",
    )
    group.add_argument("--replicas", type=int, help="replicas to start (default without Ray: one process)")
    group.add_argument(
        "--ray-address", help="an existing Ray cluster, e.g. auto or ray://head:10001 (default: a local one)"
    )
    group.add_argument(
        "--num-cpus", type=float, default=1.0, help="CPUs each replica reserves (torch threads)"
    )
    group.add_argument(
        "--num-gpus", type=float, default=0.0, help="GPUs each replica reserves (with --device cuda)"
    )
    group.add_argument("--min-replicas", type=int, help="autoscaling: fewest replicas (enables autoscaling)")
    group.add_argument("--max-replicas", type=int, help="autoscaling: most replicas (enables autoscaling)")
    group.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=2.0,
        help="autoscaling: requests in flight per replica that Serve scales towards",
    )


def wanted(args: argparse.Namespace) -> bool:
    """Whether the command line asks for Ray Serve rather than the single process."""
    return any(v is not None for v in (args.replicas, args.ray_address, args.min_replicas, args.max_replicas))


def replica_spec(args: argparse.Namespace, config: ServerConfig) -> ReplicaSpec:
    """The spec from the command line, local paths made absolute for replicas in other working directories
    (without --bank, `run` gives the replicas a temporary one)."""
    images = config.images
    dirs = tuple(Path(d).resolve() for d in images.allowed_dirs)
    config = dataclasses.replace(config, images=dataclasses.replace(images, allowed_dirs=dirs))
    # "auto" may find no GPU on the head: Ray would then wait forever for replicas it cannot place
    if args.num_gpus > 0 and not str(args.device).startswith("cuda"):
        raise AIMError("--num-gpus reserves GPUs for each replica: also pass --device cuda")
    if args.bank is None and args.ray_address is not None:
        raise AIMError(
            "--ray-address: give --bank FILE on a filesystem every node reads (replicas share demos and tasks there)"
        )
    return ReplicaSpec(
        model=_absolute(args.model),
        projector=_absolute(args.projector),
        device=args.device,
        dtype=args.dtype,
        name=args.name,
        bank=None if args.bank is None else str(Path(args.bank).resolve()),
        config=config,
        temporary_bank=args.bank is None,
        threads=max(1, int(args.num_cpus)),
        workers=args.workers or 0,
    )


def scaling(args: argparse.Namespace) -> Scaling:
    return Scaling(
        replicas=1 if args.replicas is None else args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
    )


def run(args: argparse.Namespace, config: ServerConfig) -> int:
    """Deploy the app on a local Ray cluster (or the one at --ray-address) and serve until SIGINT/SIGTERM."""
    from aim_icl.bank.layered import merge_replica_shards

    spec, bounds = replica_spec(args, config), scaling(args)
    temporary = tempfile.TemporaryDirectory(prefix="aim-serve-") if spec.bank is None else None
    if temporary is not None:  # a local cluster's replicas share a bank for this run
        spec = dataclasses.replace(spec, bank=str(Path(temporary.name) / "bank.sqlite"))
    ray, serve = import_ray()
    if not spec.temporary_bank:  # shards left by an earlier (killed) run: no replica writes them any more
        _report_merge(spec.bank, merge_replica_shards(spec.bank))
    local = args.ray_address is None
    start = time.perf_counter()
    ray.init(address=args.ray_address, include_dashboard=False if local else None)
    try:
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config=QUIET_LOGS)
        try:
            serve.run(application(spec, bounds), name=APP_NAME, route_prefix="/")
        except RuntimeError as err:  # a replica's own error (e.g. the model did not load) is in the log above
            raise AIMError(
                f"the replicas did not start ({err}); the replica's error is in the log above"
            ) from None
        print(
            f"serving {spec.name!r} on http://{args.host}:{args.port} with {_describe(bounds)} (Ray Serve, "
            f"{time.perf_counter() - start:.0f} s to start); Ctrl-C stops",
            flush=True,
        )
        _wait_for_signal()
    finally:
        _stop(serve, local)
        ray.shutdown()
        if temporary is not None:
            temporary.cleanup()
        else:
            _report_merge(spec.bank, merge_replica_shards(spec.bank))
        print(f"stopped serving {spec.name!r} on http://{args.host}:{args.port}", flush=True)
    return 0


def import_ray():
    try:
        import ray
        from ray import serve
    except ModuleNotFoundError:  # the CLI's usual line for a missing extra
        raise MissingDependency.of("ray", "cluster") from None
    return ray, serve


def _stop(serve, local: bool) -> None:
    try:
        serve.delete(APP_NAME)  # replicas stop gracefully: their banks close, their shards are whole
        if local:
            serve.shutdown()
    except Exception as err:  # the cluster may already be gone (e.g. a remote head that died)
        logger.warning("stopping the Serve application failed: %s", err)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def _describe(bounds: Scaling) -> str:
    if bounds.autoscaled:
        return f"{bounds.replicas} replicas, autoscaled within {list(bounds.bounds)}"
    return f"{bounds.replicas} replica{'s' if bounds.replicas > 1 else ''}"


def _report_merge(bank: str, added: int) -> None:
    if added:
        print(f"{bank}: merged {added} demos from replica shards", flush=True)


def _absolute(path: str | None) -> str | None:
    """A local path made absolute; a hub id (no such local path) unchanged."""
    return str(Path(path).resolve()) if path is not None and Path(path).exists() else path
