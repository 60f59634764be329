"""Serve a model over HTTP: OpenAI-compatible chat completions where earlier image turns become AIM fused demos.

Loopback only by default; binding any other address requires an API key (--api-key or AIM_ICL_API_KEY).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

from aim_icl.commands._model import (
    add_device_arguments,
    add_model_arguments,
    add_workers_argument,
    load_aim,
    model_placement,
    port_number,
)
from aim_icl.errors import AIMError
from aim_icl.serve import cluster  # no Ray at import: Ray only when --replicas asks for it
from aim_icl.serve.config import add_config_arguments  # no FastAPI or torch at import

logger = logging.getLogger(__name__)
EXTRA = "serve"  # the optional extra this verb runs on (the CLI checks it first)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--bank",
        help="Demonstration Bank file (created if absent); named tasks are stored in it too and survive a restart "
        "(default: a temporary bank, tasks in memory)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=port_number, default=8000)
    parser.add_argument("--name", default="aim", help="model name reported by /v1/models and in responses")
    add_device_arguments(parser)
    add_config_arguments(parser)  # the server's limits and scheduling: one flag per ServerConfig field
    add_workers_argument(parser)
    cluster.add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = server_config(args)  # check everything before loading a model that may take minutes
    if cluster.wanted(args):
        return cluster.run(args, config)
    import uvicorn

    from aim_icl.core.pipeline import default_workers
    from aim_icl.serve.app import create_app
    from aim_icl.serve.http import protocol
    from aim_icl.serve.service import ModelService

    aim = load_aim(args.model, args.projector, **model_placement(args))
    if args.bank is not None:  # a bank of another backbone: one error line now, not a failed start
        from aim_icl.bank import DemoBank

        DemoBank(args.bank, aim).close()
    workers = default_workers(aim.backbone.device) if args.workers is None else args.workers
    service = ModelService(aim, args.bank, model_name=args.name, workers=workers, config=config)
    server = _server(
        uvicorn.Config(
            create_app(service),
            host=args.host,
            port=args.port,
            log_level="warning",
            http=protocol(config.read_timeout_s, config.max_header_bytes),
        ),
        f"{args.name!r} on http://{_url_host(args.host)}:{args.port}",
        _describe(config, args.bank),
    )
    server.run()
    return 0


def server_config(args: argparse.Namespace):
    from aim_icl.serve.config import config_from_args
    from aim_icl.serve.templates import check_template

    if not _is_loopback(args.host) and not args.api_key:
        raise AIMError(f"--host {args.host} is not a loopback address: set --api-key (or AIM_ICL_API_KEY)")
    missing = [d for d in args.allowed_dirs if not Path(d).is_dir()]
    if missing:
        raise AIMError(f"--allow-dir {missing[0]} is not a directory")
    check_template(args.demo_template, ("user", "assistant"), what="--demo-template")
    return config_from_args(args)


def _describe(config, bank: str | None) -> str:
    tasks = f"tasks stored in {bank}" if bank else "tasks in memory (--bank FILE keeps them)"
    return f"{config.scheduler} batching of up to {config.max_batch_size} rows, {tasks}"


def _server(config, where: str, what: str):
    """uvicorn's server, saying where it listens once it does and that it stopped when it has."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                print(f"serving {where} ({what}); Ctrl-C stops", flush=True)

        async def shutdown(self, sockets=None):
            await super().shutdown(sockets)
            print(f"stopped serving {where}", flush=True)

    return Server(config)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: treat as reachable from outside
