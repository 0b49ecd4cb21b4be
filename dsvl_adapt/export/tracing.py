"""The process state a ``torch.export``-based exporter needs around its trace (ONNX's dynamo exporter, ExecuTorch).

transformers' data-dependent runtime checks must be off while tracing (``TRANSFORMERS_DISABLE_TORCH_CHECK=1``, set
only for the block), and the exporters' loggers and warnings are quietened; everything is restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence

__all__ = ["tracing_environment"]

_CHECK_SWITCH = "TRANSFORMERS_DISABLE_TORCH_CHECK"


@contextlib.contextmanager
def tracing_environment(loggers: Sequence[str] = ("torch._export", "torch.export")) -> Iterator[None]:
    """transformers' checks off and the named ``loggers`` at ERROR, warnings ignored, for the block."""
    old = os.environ.get(_CHECK_SWITCH)
    os.environ[_CHECK_SWITCH] = "1"
    quiet = [logging.getLogger(name) for name in loggers]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
        if old is None:
            os.environ.pop(_CHECK_SWITCH, None)
        else:
            os.environ[_CHECK_SWITCH] = old
