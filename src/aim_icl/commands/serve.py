"""Serve a model over HTTP: OpenAI-compatible chat completions where earlier image turns become AIM fused demos.

Loopback only by default; binding any other address requires an API key (--api-key or AIM_ICL_API_KEY).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

from aim_icl.commands._model import (
    DEVICE_HELP,
    add_model_arguments,
    add_workers_argument,
    load_aim,
    port_number,
    positive_float,
    positive_int,
    torch_device,
)
from aim_icl.errors import AIMError
from aim_icl.serve import cluster  # no Ray at import: Ray only when --replicas asks for it

logger = logging.getLogger(__name__)
EXTRA = "serve"  # the optional extra this verb runs on (the CLI checks it first)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--bank", help="Demonstration Bank file (created if absent; default: a temporary one)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=port_number, default=8000)
    parser.add_argument(
        "--api-key", default=os.environ.get("AIM_ICL_API_KEY"), help="bearer key (env AIM_ICL_API_KEY)"
    )
    parser.add_argument(
        "--allow-dir", action="append", default=[], help="directory local image paths may be in"
    )
    parser.add_argument("--name", default="aim", help="model name reported by /v1/models and in responses")
    parser.add_argument("--device", type=torch_device, default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--queue-size", type=int, default=32, help="requests waiting for the model; more get 503"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help="rows generated at once: waiting requests share one batch (a request asking n choices is n rows)",
    )
    parser.add_argument("--max-n", type=int, default=8, help="choices one chat request may ask for (n)")
    parser.add_argument(
        "--timeout", type=positive_float, default=60.0, help="seconds per request, queueing included"
    )
    parser.add_argument("--max-body-bytes", type=positive_int, default=32 * 1024 * 1024)
    parser.add_argument(
        "--max-header-bytes",
        type=positive_int,
        default=16 * 1024,
        help="request line and headers; more get 431",
    )
    parser.add_argument(
        "--read-timeout",
        type=positive_float,
        default=30.0,
        help="seconds to receive a request's headers, and again its body; slower clients get 408",
    )
    parser.add_argument("--max-image-bytes", type=positive_int, default=8 * 1024 * 1024)
    parser.add_argument("--max-image-pixels", type=positive_int, default=4096 * 4096)
    parser.add_argument(
        "--max-image-aspect",
        type=positive_float,
        default=50.0,
        help="longer side over shorter side of an image",
    )
    parser.add_argument("--max-demos", type=int, default=32, help="demonstrations per request or task")
    parser.add_argument("--max-tasks", type=positive_int, default=100, help="tasks registered at once")
    parser.add_argument(
        "--max-bank-demos",
        type=positive_int,
        default=10_000,
        help="demos the bank may hold before requests stop adding to it",
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=64, help="when a request names no max_tokens"
    )
    parser.add_argument(
        "--demo-template",
        help="chat demo text from {user} and {assistant} (default: the two joined by a space)",
    )
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

    aim = load_aim(args.model, args.projector, device=args.device)
    workers = default_workers(aim.backbone.device) if args.workers is None else args.workers
    app = create_app(ModelService(aim, args.bank, model_name=args.name, workers=workers), config)
    http = protocol(config.read_timeout_s, args.max_header_bytes)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", http=http)
    return 0


def server_config(args: argparse.Namespace):
    from aim_icl.serve.app import ServerConfig
    from aim_icl.serve.chat import DEFAULT_DEMO_TEMPLATE
    from aim_icl.serve.images import ImagePolicy
    from aim_icl.serve.templates import check_template

    if min(args.queue_size, args.max_batch_size, args.max_n) < 1:
        raise AIMError("--queue-size, --max-batch-size and --max-n must be at least 1")
    if not _is_loopback(args.host) and not args.api_key:
        raise AIMError(f"--host {args.host} is not a loopback address: set --api-key (or AIM_ICL_API_KEY)")
    missing = [d for d in args.allow_dir if not Path(d).is_dir()]
    if missing:
        raise AIMError(f"--allow-dir {missing[0]} is not a directory")
    template = args.demo_template or DEFAULT_DEMO_TEMPLATE
    check_template(template, ("user", "assistant"), what="--demo-template")
    allowed = tuple(Path(d) for d in args.allow_dir)
    images = ImagePolicy(args.max_image_bytes, args.max_image_pixels, allowed, args.max_image_aspect)
    return ServerConfig(
        api_key=args.api_key,
        queue_size=args.queue_size,
        max_batch_size=args.max_batch_size,
        max_n=args.max_n,
        timeout_s=args.timeout,
        max_body_bytes=args.max_body_bytes,
        read_timeout_s=args.read_timeout,
        max_demos=args.max_demos,
        max_new_tokens=args.max_new_tokens,
        max_tasks=args.max_tasks,
        max_bank_demos=args.max_bank_demos,
        demo_template=template,
        images=images,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: treat as reachable from outside
