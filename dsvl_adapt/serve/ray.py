"""The same server as Ray Serve replicas, with autoscaling (``pip install "dsvl-adapt[serve-ray]"``).

Each replica builds the whole :class:`~dsvl_adapt.serve.app.Server` (model, batcher, cache, monitor) once, from the
run or model folder, and serves the FastAPI application of :func:`~dsvl_adapt.serve.app.create_app` through Ray
Serve's ingress; Ray's HTTP proxy spreads requests over the replicas and its autoscaler adds or removes replicas
from the number of requests in flight. Nothing here balances load by itself.

    python -m dsvl_adapt.serve.ray runs/finance --replicas 2 --port 8000
    python -m dsvl_adapt.serve.ray runs/finance --min-replicas 1 --max-replicas 4 --target-ongoing 8

On Kubernetes, KubeRay's ``RayService`` imports :func:`app_from_env` (docs/serving.md).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

DEPLOYMENT = "DsvlServe"


def _replica_name() -> str:
    from ray import serve

    context = serve.get_replica_context()
    replica = getattr(context, "replica_id", None)
    return str(getattr(replica, "unique_id", None) or getattr(context, "replica_tag", None) or os.getpid())


def deployment(path: str | Path, *, replicas: int | None = 1, min_replicas: int | None = None,
               max_replicas: int | None = None, target_ongoing: int = 8, num_cpus: float = 1.0,
               threads: int | None = None, log_dir: str | Path | None = None, options: Any = None,
               name: str | None = None) -> Any:
    """The Ray Serve application (bound deployment) serving ``path``: ``replicas`` fixed replicas, or autoscaling
    between ``min_replicas`` and ``max_replicas`` aiming at ``target_ongoing`` requests in flight per replica.

    Each replica writes its monitor log under ``log_dir/replica-<id>`` (default: the run's ``serve`` folder)."""
    from ray import serve

    path = Path(path).absolute()
    base_log = Path(log_dir).absolute() if log_dir else None

    def build_app() -> Any:  # runs on each replica, once
        from . import build_server, settle_heap
        from .app import create_app

        replica_log = None
        if base_log is not None:
            replica_log = base_log / f"replica-{_replica_name()}"
        else:
            from .model import find_deployment

            found = find_deployment(path)
            root = found.run_dir / "serve" if found.run_dir else Path("serve-logs").absolute()
            replica_log = root / f"replica-{_replica_name()}"
        server = build_server(path, log_dir=replica_log, threads=threads, name=name, options=options)
        settle_heap()  # each replica is its own process
        server.scheduler.start()  # also started by the app's lifespan; starting twice is harmless
        return create_app(server)

    scaling: dict[str, Any] = {"ray_actor_options": {"num_cpus": num_cpus},
                               "max_ongoing_requests": max(2 * target_ongoing, 16)}
    if min_replicas is not None or max_replicas is not None:
        scaling["autoscaling_config"] = {"min_replicas": min_replicas or 1,
                                         "max_replicas": max_replicas or max(min_replicas or 1, 1),
                                         "target_ongoing_requests": target_ongoing}
    else:
        scaling["num_replicas"] = replicas or 1
    wrapped = serve.deployment(name=DEPLOYMENT, **scaling)(serve.ingress(build_app)())
    return wrapped.bind()


def app_from_env(args: dict[str, Any] | None = None) -> Any:
    """An application builder for Serve config files and KubeRay: the folder comes from ``args["path"]`` or the
    ``DSVL_SERVE_PATH`` variable; replica counts come from the config's ``deployments`` section."""
    args = dict(args or {})
    path = args.get("path") or os.environ.get("DSVL_SERVE_PATH")
    if not path:
        raise ValueError("set DSVL_SERVE_PATH (or args.path) to the run or model folder to serve")
    return deployment(path, log_dir=args.get("log_dir") or os.environ.get("DSVL_SERVE_LOG_DIR"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsvl_adapt.serve.ray",
                                     description="Serve a run's deployed model as Ray Serve replicas on a local or "
                                                 "existing Ray cluster (RAY_ADDRESS).")
    parser.add_argument("path", metavar="RUN_DIR|MODEL_DIR")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--min-replicas", type=int, default=None)
    parser.add_argument("--max-replicas", type=int, default=None)
    parser.add_argument("--target-ongoing", type=int, default=8, help="requests in flight per replica (autoscaling)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--log-dir", default=None)
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(deployment(args.path, replicas=args.replicas, min_replicas=args.min_replicas,
                         max_replicas=args.max_replicas, target_ongoing=args.target_ongoing, num_cpus=args.num_cpus,
                         threads=args.threads, log_dir=args.log_dir), route_prefix="/")
    print(f"serving on http://{args.host}:{args.port}/v1 (Ray Serve); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
