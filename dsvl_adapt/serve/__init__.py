"""Serve a run's deployed model over HTTP (OpenAI chat completions) and watch it.

``dsvl-adapt serve RUN_DIR|MODEL_DIR`` builds a :class:`~dsvl_adapt.serve.app.Server` (model, dynamic batching,
response cache, monitor) with :func:`build_server` and runs it on uvicorn; ``dsvl-adapt monitor LOG_DIR`` renders the
monitor's log (:mod:`dsvl_adapt.serve.report`). Modules, one concern each:

* :mod:`~dsvl_adapt.serve.model` - the deployed artifact and the adapter to the runtime contract;
* :mod:`~dsvl_adapt.serve.protocol` - the OpenAI request, validated, turned into chat messages;
* :mod:`~dsvl_adapt.serve.limits` - request/image/generation limits and the 4xx errors;
* :mod:`~dsvl_adapt.serve.batching` - cost grading, priorities, bounded queue, dynamic batches;
* :mod:`~dsvl_adapt.serve.cache` - the response cache (memory and disk);
* :mod:`~dsvl_adapt.serve.monitor`, :mod:`~dsvl_adapt.serve.drift` - request log, metrics, drift, hard cases;
* :mod:`~dsvl_adapt.serve.app` - the FastAPI routes; :mod:`~dsvl_adapt.serve.ray` - Ray Serve replicas.

FastAPI, uvicorn, prometheus-client and SciPy come with ``pip install "dsvl-adapt[serve]"`` and are imported here
lazily.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

from ..errors import DsvlAdaptError

log = logging.getLogger("dsvl_adapt.serve")

#: Training images sampled for the drift reference.
REFERENCE_IMAGES = 64


def require_serving() -> None:
    """Fail with the install command when the serving extra is missing."""
    missing = []
    for module in ("fastapi", "uvicorn", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise DsvlAdaptError(f"serving needs {', '.join(missing)}: pip install \"dsvl-adapt[serve]\"")


def build_server(path: str | Path, *, log_dir: str | Path | None = None, threads: int | None = None,
                 name: str | None = None, options: Any = None, reference_dir: str | Path | None = None,
                 monitor_settings: dict[str, Any] | None = None) -> Any:
    """A ready :class:`~dsvl_adapt.serve.app.Server` for a run folder or a model folder.

    The drift reference is a sample of the run's training images (loaded as the run loaded them), or the images of
    a ``data.source`` folder given as ``reference_dir``; with neither, drift is unknown. The monitor writes under
    ``log_dir`` (default: ``RUN_DIR/serve`` for a run, ``./serve-logs`` for a model folder)."""
    require_serving()
    from .app import Server, ServeOptions
    from .drift import DriftReference
    from .model import ServedModel, find_deployment
    from .monitor import Monitor, MonitorSettings

    deployment = find_deployment(path)
    served = ServedModel(deployment.model_dir, threads=threads,
                         name=name or (f"dsvl-{deployment.vertical}" if deployment.vertical else None))
    options = options or ServeOptions()
    budget = deployment.max_answer_tokens()
    if budget is not None and options.default_max_tokens == ServeOptions().default_max_tokens:
        from dataclasses import replace

        options = replace(options, default_max_tokens=budget)  # the scorecard's budget, unless set
    reference = None
    source = ""
    if reference_dir is not None:
        images = _folder_images(Path(reference_dir))
        source = str(reference_dir)
    elif deployment.run_dir is not None:
        rows = deployment.rows("train", served.image_size)[:REFERENCE_IMAGES]
        images = [row.image for row in rows]
        source = f"{deployment.run_dir} (train split)"
    else:
        images = []
    if len(images) >= 2:
        reference = DriftReference.from_images(images, source=source)
    else:
        log.warning("no training images for the drift reference: drift is recorded as unknown (serve a run folder "
                    "or pass --reference DATA_DIR)")
    if log_dir is None:
        log_dir = deployment.run_dir / "serve" if deployment.run_dir is not None else Path("serve-logs")
    monitor = Monitor(MonitorSettings(log_dir=Path(log_dir), **(monitor_settings or {})), reference=reference,
                      model={"name": served.name, "runtime": served.label, "directory": str(served.directory),
                             "run_dir": str(deployment.run_dir) if deployment.run_dir else None,
                             "drift_reference": source or None})
    return Server(served, options, monitor)


def _folder_images(directory: Path) -> list[Any]:
    """The images of a ``data.source`` folder's train split (up to :data:`REFERENCE_IMAGES`)."""
    from ..data.images import open_image
    from ..data.jsonl import read_jsonl_split

    images = []
    for row in read_jsonl_split(directory, "train"):
        if "image" in row and "_error" not in row:
            images.append(open_image(directory / row["image"], source=row["_source"]))
        if len(images) >= REFERENCE_IMAGES:
            break
    return images


def settle_heap() -> None:
    """Collect once, then move every object alive now (modules, the model, the tokenizer: some 400,000 tracked
    objects) out of the garbage collector's sight (:func:`gc.freeze`). Without it each full collection walks them
    all, a 200-300 ms pause of every thread at an unpredictable request; with it, collections see only what
    requests allocate. Call once per serving process, after the server is built."""
    gc.collect()
    gc.freeze()


def serve(server: Any, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server on uvicorn until interrupted."""
    import uvicorn

    from .app import create_app

    settle_heap()
    uvicorn.run(create_app(server), host=host, port=port, log_level="warning", access_log=False)


__all__ = ["build_server", "require_serving", "serve", "settle_heap"]
