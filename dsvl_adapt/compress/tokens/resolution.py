"""``resolution``: a smaller input image, the vision tower's position embeddings interpolated to its grid.

``K`` is a square (``g × g`` patches): the image side becomes ``g · patch_size``, the SigLIP position table
is resized from ``n × n`` to ``g × g`` by bicubic interpolation (as ViTs are fine-tuned at new resolutions),
and the processor resizes images to that side. Everything is in the config (``vision_config.image_size``)
and the weights, so plain transformers loads and runs the reduced model exactly; the exported graphs take the
smaller ``pixel_values`` and give ``K`` embeddings.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .contract import TokenBudget, square_tokens_for_keep


def interpolate_positions(table: torch.Tensor, side: int) -> torch.Tensor:
    """(n², D) position table -> (side², D), bicubic over the n × n grid."""
    count, width = table.shape
    source = math.isqrt(count)
    if source * source != count:
        raise ValueError(f"the position table holds {count} positions, not a square grid")
    grid = table.detach().float().reshape(1, source, source, width).permute(0, 3, 1, 2)
    resized = nn.functional.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(side * side, width).to(table.dtype)


class ResolutionReducer:
    """The registered ``resolution`` method."""

    name = "resolution"
    description = ("a smaller image (K = g x g patches) with the position embeddings interpolated; in the config, "
                   "so plain transformers reproduces it; exports with K tokens")
    deploys = "graphs"

    def image_tokens(self, source_tokens: int, keep: float) -> int:
        return square_tokens_for_keep(source_tokens, keep)

    def apply(self, model: Any, processor: Any, image_tokens: int) -> dict[str, Any]:
        config = model.config
        if getattr(config, "high_res_vision_config", None) is not None:
            raise ValueError("prune.tokens.method=resolution: the SigLIP+SAM hybrid's SAM branch always gives "
                             "24 x 24 tokens, so a smaller SigLIP image cannot reduce them; not supported yet")
        side = math.isqrt(image_tokens)
        if side * side != image_tokens:
            raise ValueError(f"resolution needs a square token count (g x g patches); {image_tokens} is not one")
        vision = config.vision_config
        embeddings = model.model.vision_model.embeddings
        table = embeddings.position_embedding.weight
        positions = nn.Embedding(image_tokens, table.shape[1], device=table.device, dtype=table.dtype)
        with torch.no_grad():
            positions.weight.copy_(interpolate_positions(table, side))
        embeddings.position_embedding = positions
        embeddings.num_patches = embeddings.num_positions = image_tokens
        embeddings.image_size = side * vision.patch_size
        embeddings.register_buffer("position_ids", torch.arange(image_tokens, device=table.device).expand((1, -1)),
                                   persistent=False)
        source_size = vision.image_size
        vision.image_size = side * vision.patch_size
        model.model.vision_model.config.image_size = vision.image_size
        processor.image_processor.size = {"height": vision.image_size, "width": vision.image_size}
        processor.num_image_tokens = image_tokens
        return {"image_size": vision.image_size, "source_image_size": source_size}

    def restore(self, model: Any, budget: TokenBudget) -> None:
        """Nothing: the config's image size and the saved position table rebuild it."""


__all__ = ["ResolutionReducer", "interpolate_positions"]
