"""int4 weight compression of an OpenVINO model with NNCF (``nncf.compress_weights``), calibrated on the
vertical's own rows.

Two ways in:

* **policy** (no per-layer plan): one ``compress_weights`` call - ``INT4_ASYM``/``INT4_SYM`` in groups of
  ``group_size``, ``ratio`` of the layers in int4 (NNCF ranks them by its sensitivity metric, the rest at
  ``backup``), NNCF's own choice of backup layers (embeddings, the last layer), and the data-aware algorithms AWQ,
  scale estimation and GPTQ on a ``nncf.Dataset`` of the model's inputs for the calibration batches.
* **explicit plan** (``layers``: op -> int4 | int8 | fp32, what :mod:`.mixed` chooses): an INT8_ASYM pass over
  the int8 layers, then an int4 pass over the int4 layers with ``all_layers=True`` and no backup, each pass
  ignoring every other op, so each layer ends at exactly the precision the plan gives it.

:func:`layer_precisions` reads back what each weighted op actually holds (the constant's element type), which
is what the plan file records: NNCF's own choices included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

__all__ = ["Int4Options", "compress_int4", "layer_precisions"]

LayerPrecision = Literal["int4", "int8", "fp32"]
_INT4 = {"i4", "u4", "nf4"}
_INT8 = {"i8", "u8"}


class Int4Options:
    """NNCF int4 knobs (plain holder; the pipeline validates them in ``QuantizeConfig``)."""

    def __init__(self, *, group_size: int = 128, symmetric: bool = False, ratio: float = 1.0,
                 algorithm: str = "rtn", backup: str = "int8", sensitivity_metric: str | None = None):
        if algorithm not in ("rtn", "awq", "scale_estimation", "awq_scale_estimation", "gptq"):
            raise ValueError(f"NNCF int4 algorithm must be rtn, awq, scale_estimation, awq_scale_estimation or "
                             f"gptq, got {algorithm!r}")
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        if backup not in ("int8", "fp32"):
            raise ValueError(f"backup must be int8 or fp32, got {backup!r}")
        self.group_size, self.symmetric, self.ratio = group_size, symmetric, ratio
        self.algorithm, self.backup, self.sensitivity_metric = algorithm, backup, sensitivity_metric

    @property
    def data_aware(self) -> bool:
        return self.algorithm != "rtn"

    def nncf_kwargs(self) -> dict[str, Any]:
        """The ``compress_weights`` arguments these options stand for (recorded in the artifact's report)."""
        import nncf

        kwargs: dict[str, Any] = {
            "mode": nncf.CompressWeightsMode.INT4_SYM if self.symmetric else nncf.CompressWeightsMode.INT4_ASYM,
            "group_size": self.group_size, "ratio": self.ratio,
            "backup_mode": nncf.BackupMode.INT8_ASYM if self.backup == "int8" else nncf.BackupMode.NONE,
        }
        if self.algorithm in ("awq", "awq_scale_estimation"):
            kwargs["awq"] = True
        if self.algorithm in ("scale_estimation", "awq_scale_estimation"):
            kwargs["scale_estimation"] = True
        if self.algorithm == "gptq":
            kwargs["gptq"] = True
        if self.sensitivity_metric:
            kwargs["sensitivity_metric"] = nncf.SensitivityMetric[self.sensitivity_metric.upper()]
        return kwargs

    def as_dict(self) -> dict[str, Any]:
        return {"group_size": self.group_size, "symmetric": self.symmetric, "ratio": self.ratio,
                "algorithm": self.algorithm, "backup": self.backup, "sensitivity_metric": self.sensitivity_metric}


def compress_int4(model, options: Int4Options, *, ignored: Sequence[str] = (),
                  calibration: Sequence[Mapping[str, np.ndarray]] = (),
                  layers: Mapping[str, LayerPrecision] | None = None):
    """Compress ``model`` (an ``ov.Model``, changed in place and returned).

    ``ignored``: friendly names kept in full precision (the skip policy). ``calibration``: the model's input dicts,
    needed by the data-aware algorithms (and by ``ratio < 1`` with a data-based sensitivity metric).
    ``layers``: an explicit plan, friendly name -> precision, for weighted ops; ops not named keep fp32.
    """
    import nncf

    if options.data_aware and not calibration:
        raise ValueError(f"algorithm {options.algorithm!r} is data-aware: it needs calibration batches")
    dataset = nncf.Dataset(list(calibration)) if calibration else None
    subset = max(1, len(calibration))
    try:
        return _compress(model, options, ignored, dataset, subset, layers)
    except nncf.errors.InvalidGroupSizeError as e:
        raise ValueError(f"quantize.block_size={options.group_size} does not divide the input channels of some "
                         f"layers ({' '.join(str(e).split())[:400]}): choose a group size that divides them, e.g. "
                         "32, which divides every preset's widths") from None


def _compress(model, options: Int4Options, ignored: Sequence[str], dataset, subset: int,
              layers: Mapping[str, LayerPrecision] | None):
    import nncf

    if layers is None:
        return nncf.compress_weights(model, **options.nncf_kwargs(), dataset=dataset, subset_size=subset,
                                     ignored_scope=nncf.IgnoredScope(names=list(ignored), validate=False))
    weighted = set(layers)
    for precision in ("int8", "int4"):
        chosen = {name for name, p in layers.items() if p == precision}
        if not chosen:
            continue
        scope = nncf.IgnoredScope(names=sorted(set(ignored) | (weighted - chosen)), validate=False)
        if precision == "int8":
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=scope)
        else:
            kwargs = {**options.nncf_kwargs(), "ratio": 1.0, "backup_mode": nncf.BackupMode.NONE}
            model = nncf.compress_weights(model, **kwargs, all_layers=True, dataset=dataset, subset_size=subset,
                                          ignored_scope=scope)
    return model


def layer_precisions(model, weighted_ops: Sequence[Any], weight_source) -> dict[str, LayerPrecision]:
    """Friendly name -> the precision its weight constant holds after compression (``weight_source(op)`` finds the
    constant through decompression ops, as :mod:`dsvl_adapt.runtimes.openvino` does)."""
    out: dict[str, LayerPrecision] = {}
    for op in weighted_ops:
        constant = weight_source(op)
        if constant is None:
            continue
        kind = constant.get_output_element_type(0).get_type_name()
        out[op.get_friendly_name()] = "int4" if kind in _INT4 else "int8" if kind in _INT8 else "fp32"
    return out


def compress_for_config(model, config, ignored: Sequence[str], calibration: Sequence[Mapping[str, np.ndarray]],
                        module_paths: Mapping[str, str | None]):
    """The int4 path of the OpenVINO quantizer for a :class:`~dsvl_adapt.compress.quantize.QuantizeConfig`:
    NNCF's policy when ``config.per_layer`` is empty, else the explicit plan (each weighted op at the precision
    ``config.layer_precision`` gives its module)."""
    from dsvl_adapt.runtimes.openvino import _weighted_ops

    options = Int4Options(group_size=config.block_size, symmetric=config.symmetric, ratio=config.ratio,
                          algorithm=config.algorithm, backup=config.backup)
    layers = None
    if config.per_layer:
        skipped = set(ignored)
        layers = {op.get_friendly_name(): config.layer_precision(module_paths.get(op.get_friendly_name()) or "")
                  for op in _weighted_ops(model) if op.get_friendly_name() not in skipped}
    return compress_int4(model, options, ignored=ignored, calibration=calibration if options.data_aware else (),
                         layers=layers)


def write_layer_plan(model, module_paths: Mapping[str, str | None], path, options: Mapping[str, Any]) -> None:
    """Write ``path``: {module path: precision} for every weighted op of the compressed ``model``."""
    import json
    from pathlib import Path

    from dsvl_adapt.runtimes.openvino import _weight_source, _weighted_ops

    found = layer_precisions(model, _weighted_ops(model), _weight_source)
    layers = {module_paths.get(name) or name: precision for name, precision in found.items()}
    Path(path).write_text(json.dumps({"options": dict(options), "layers": layers}, indent=2) + "\n")
