"""Progress bars for long loops (rich), quiet when not on a terminal or when disabled."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator


@contextmanager
def progress_bar(label: str, total: int, completed: int = 0, disable: bool = False) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n, **fields)``; shows a rich bar with the latest loss on a terminal."""
    if disable or os.environ.get("DSVL_ADAPT_NO_PROGRESS"):
        yield lambda n=1, **fields: None
        return
    if not sys.stderr.isatty():  # logs and CI: a plain line every tenth of the way
        state = {"done": completed, "every": max(1, total // 10)}

        def log_line(n: int = 1, **fields: Any) -> None:
            state["done"] += n
            if state["done"] % state["every"] == 0 or state["done"] == total:
                print(f"  {label}: {state['done']}/{total} {_fields(fields)}", file=sys.stderr, flush=True)

        yield log_line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(label, total=total, completed=completed, info="")

        def advance(n: int = 1, **fields: Any) -> None:
            progress.update(task, advance=n, info=_fields(fields))

        yield advance


def _fields(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


def quiet_libraries() -> None:
    """Keep the console for dsvl-adapt's own progress: libraries log warnings and errors only."""
    import logging

    logging.getLogger().setLevel(logging.WARNING)  # ONNX Runtime's quantizer logs at INFO on the root logger
    for name in ("accelerate", "transformers", "torch_pruning", "peft", "nncf", "onnxruntime", "onnx_ir", "onnxscript",
                 "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
