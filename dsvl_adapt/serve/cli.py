"""The ``serve`` and ``monitor`` commands (registered on the main parser by :func:`add_commands`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

SERVE_EPILOG = """\
examples:
  dsvl-adapt serve runs/finance                                  # the run's deployed student on 127.0.0.1:8000
  dsvl-adapt serve runs/finance --host 0.0.0.0 --token-env DSVL_TOKEN --max-batch 8 --cache-dir /var/cache/dsvl
  dsvl-adapt serve runs/finance/stages/quantize/onnx-int8 --reference data/finance   # a model folder
then, with the official client:
  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="TOKEN or anything").chat.completions.create(
      model="dsvl-finance", messages=[{"role": "user", "content": [
          {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
          {"type": "text", "text": "What is the invoice total?"}]}])
"""


def add_commands(sub: Any) -> None:
    serve = sub.add_parser("serve", help="serve a run's deployed model: OpenAI chat completions, metrics, monitor",
                           description="Serve the deployed artifact of a run (the quantized student it scored) or a "
                                       "model folder over HTTP: POST /v1/chat/completions (images as data URLs, "
                                       "streaming or not), GET /v1/models, /health, /ready, /metrics (Prometheus). "
                                       "Requests are batched dynamically and answers cached; every request is "
                                       "logged under --log-dir for `dsvl-adapt monitor`. See docs/serving.md.",
                           epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("path", metavar="RUN_DIR|MODEL_DIR", help="a run folder or a model folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' (visible in ps; "
                                                     "prefer --token-env)")
    serve.add_argument("--token-env", default=None, metavar="VAR", help="read the bearer token from this variable")
    serve.add_argument("--model-name", default=None, help="the model id clients send (default dsvl-VERTICAL)")
    serve.add_argument("--threads", type=int, default=None, help="inference threads (default: the runtime's)")
    serve.add_argument("--max-batch", type=int, default=8, help="most requests per model batch (default 8)")
    serve.add_argument("--max-wait-ms", type=float, default=10.0,
                       help="how long the first request of a batch waits for more (default 10)")
    serve.add_argument("--max-queue", type=int, default=64,
                       help="requests waiting at most; beyond it 429 with Retry-After (default 64)")
    serve.add_argument("--cache-entries", type=int, default=4096, help="answers kept in memory (0: no cache)")
    serve.add_argument("--cache-dir", default=None, help="also keep answers on disk here (survives restarts)")
    serve.add_argument("--max-tokens", type=int, default=None,
                       help="answer budget when a request sets none (default: the vertical's, as scored)")
    serve.add_argument("--max-tokens-limit", type=int, default=256, help="largest max_tokens a request may ask")
    serve.add_argument("--max-image-bytes", type=int, default=4 * 2**20,
                       help="largest image file a request may carry, decoded from its data URL (default 4 MiB)")
    serve.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                       help="largest image in pixels, checked before decoding (default 4096x4096)")
    serve.add_argument("--max-request-bytes", type=int, default=8 * 2**20,
                       help="largest request body (default 8 MiB)")
    serve.add_argument("--allow-local-images", action="store_true",
                       help="accept image_url values that are paths on the server (off: data URLs only)")
    serve.add_argument("--log-dir", default=None, help="request log and hard cases (default RUN_DIR/serve)")
    serve.add_argument("--reference", default=None, metavar="DATA_DIR",
                       help="a data.source folder whose train images are the drift reference (default: the run's)")
    serve.add_argument("--low-confidence", type=float, default=-1.0,
                       help="mean token log-probability below which a request is a hard case (default -1.0)")
    serve.set_defaults(handler=_cmd_serve)

    monitor = sub.add_parser("monitor", help="HTML report of a server's request log: latency, confidence, drift",
                             description="Read the request log a `dsvl-adapt serve` wrote (LOG_DIR, default "
                                         "RUN_DIR/serve) and write monitor.html: latency percentiles over time, "
                                         "confidence and drift plots, flagged answers and the hard cases.")
    monitor.add_argument("log_dir", metavar="LOG_DIR")
    monitor.add_argument("--out", default=None, metavar="FILE", help="default LOG_DIR/monitor.html")
    monitor.set_defaults(handler=_cmd_monitor)


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from . import build_server, serve
    from .app import ServeOptions
    from .limits import Limits
    from .model import find_deployment

    token = args.token
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise ConfigError(f"--token-env {args.token_env}: the variable is unset or empty")
    for flag in ("max_batch", "max_queue", "max_tokens_limit", "max_image_bytes", "max_image_pixels",
                 "max_request_bytes"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    limits = Limits(max_request_bytes=args.max_request_bytes, max_image_bytes=args.max_image_bytes,
                    max_image_pixels=args.max_image_pixels, max_new_tokens=args.max_tokens_limit)
    options = ServeOptions(token=token, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                           max_queue=args.max_queue, cache_entries=args.cache_entries,
                           cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                           allow_local_images=args.allow_local_images, limits=limits,
                           **({"default_max_tokens": args.max_tokens} if args.max_tokens else {}))
    find_deployment(args.path)  # a wrong path is named first
    _check_port_free(args.host, args.port)  # before the model loads, and before the log folder is made
    server = build_server(args.path, log_dir=args.log_dir, threads=args.threads, name=args.model_name,
                          options=options, reference_dir=args.reference,
                          monitor_settings={"low_confidence": args.low_confidence})
    print(f"serving {server.model.name} ({server.model.label}, {server.model.directory}) on "
          f"http://{args.host}:{args.port}/v1; log: {server.monitor.log_dir}", flush=True)
    serve(server, host=args.host, port=args.port)
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Fail at once, naming the flag, when ``host:port`` cannot be bound (in use, or not an address here)."""
    import socket

    from ..errors import ConfigError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(infos[0][4])
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): another server may hold the "
                          "port; pick another with --port, or stop that server") from None


def _cmd_monitor(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(Path(args.log_dir), Path(args.out) if args.out else None)
    print(f"monitor report: {path}")
    return 0
