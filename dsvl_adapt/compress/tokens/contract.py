"""The contract of a visual-token reduction method (issue 17), free of torch so configs validate fast.

A method is a registered object (:func:`dsvl_adapt.hookspecs.dsvl_adapt_register_token_reducers`) that
satisfies :class:`TokenReducer`. It turns a student with ``N`` image tokens per image into one that feeds
``K`` of them to the language model, by changing the model itself (a module after the aligner, a smaller
image, ...), so that distillation, saving, export and every runtime see the budget with no special path.

The budget is recorded in the model's config as ``token_budget`` (:class:`TokenBudget`) and the processor is
saved with ``num_image_tokens=K``, so prompts hold ``K`` ``<image_placeholder>`` tokens.
:func:`dsvl_adapt.load` (every loader of the SDK goes through
:func:`dsvl_adapt.models.checkpoint.load_checkpoint`) calls the method's :meth:`TokenReducer.restore` to
put back what the config alone cannot express.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

#: The key of the model config (``config.json``) that records the budget.
CONFIG_KEY = "token_budget"

Deployment = Literal["graphs", "torch"]


class TokenBudget(BaseModel):
    """What a reduced student records in its config (``config.token_budget``)."""

    model_config = ConfigDict(extra="allow")

    method: str = Field(description="the registered token-reduction method")
    image_tokens: int = Field(ge=1, description="K: image tokens per image the language model reads")
    source_image_tokens: int = Field(ge=1, description="N: image tokens per image before the reduction")
    keep: float = Field(gt=0, le=1, description="K / N")
    deploys: Deployment = Field(description="'graphs': exported graphs take K tokens; 'torch': PyTorch only")
    masks: bool = Field(False, description="true: all N image tokens stay in the sequence and an attention mask "
                                           "lets the text read K of them (window, text-guided)")

    @property
    def sequence_image_tokens(self) -> int:
        """Image tokens per image in the sequence: N for a masking method, K otherwise."""
        return self.source_image_tokens if self.masks else self.image_tokens


@runtime_checkable
class TokenReducer(Protocol):
    """A visual-token reduction method.

    ``name`` is what ``prune.tokens.method`` selects; ``deploys`` says whether the reduced model exports to
    graphs with exactly ``K`` image tokens (``"graphs"``) or runs in PyTorch only (``"torch"``, the reason in
    ``description``). A method may also set ``masks = True`` (default False): the processor keeps all ``N``
    image tokens in the sequence and an attention mask lets the text read ``K`` of them (``window``,
    ``text-guided``; see :mod:`dsvl_adapt.compress.tokens.masking`).
    """

    name: str
    description: str
    deploys: Deployment

    def image_tokens(self, source_tokens: int, keep: float) -> int:
        """K this method gives for ``keep`` of ``source_tokens`` (it may round, e.g. to a square grid)."""
        ...

    def apply(self, model: Any, processor: Any, image_tokens: int) -> dict[str, Any]:
        """Reduce ``model`` (in place) to ``image_tokens`` per image and set the processor to match
        (``num_image_tokens``, image size); returns figures for the stage (JSON values)."""
        ...

    def restore(self, model: Any, budget: TokenBudget) -> None:
        """Put back on a freshly loaded ``model`` what its config cannot express (a module after the aligner);
        nothing for a method the config expresses fully (``resolution``)."""
        ...


def check_reducer(item: Any, plugin: str) -> None:
    """Registry check: a reducer has the contract's attributes and a valid ``deploys``."""
    from ...errors import PluginError

    wanted = ("name", "description", "deploys", "image_tokens", "apply", "restore")
    missing = [a for a in wanted if not hasattr(item, a)]
    if missing:
        raise PluginError(f"plugin {plugin!r} registered a token reducer without {', '.join(missing)} "
                          "(see dsvl_adapt.compress.tokens.contract.TokenReducer)")
    if item.deploys not in ("graphs", "torch"):
        raise PluginError(f"plugin {plugin!r}: token reducer {item.name!r} has deploys={item.deploys!r}; "
                          "use 'graphs' or 'torch'")


class LazyTokenReducer:
    """A reducer registered by name whose implementation (torch) is imported only when it is applied.

    ``target`` is ``"module:Class"``; ``square`` says whether K is rounded to a square grid; ``masks`` whether the
    method keeps all N tokens in the sequence (an attention mask). Keeps plugin
    loading (and ``dsvl-adapt plugins``) free of torch imports, as :class:`dsvl_adapt.engine.LazyStage` does.
    """

    def __init__(self, name: str, description: str, target: str, *, deploys: Deployment = "graphs",
                 square: bool = False, masks: bool = False) -> None:
        self.name = name
        self.description = description
        self.target = target
        self.deploys = deploys
        self.square = square
        self.masks = masks
        self._loaded: Any = None

    def load(self) -> TokenReducer:
        if self._loaded is None:
            from ...plugins import load_target

            self._loaded = load_target(self.target)()
        return self._loaded

    def image_tokens(self, source_tokens: int, keep: float) -> int:
        return (square_tokens_for_keep if self.square else tokens_for_keep)(source_tokens, keep)

    def apply(self, model: Any, processor: Any, image_tokens: int) -> dict[str, Any]:
        return self.load().apply(model, processor, image_tokens)

    def restore(self, model: Any, budget: TokenBudget) -> None:
        self.load().restore(model, budget)


def tokens_for_keep(source_tokens: int, keep: float) -> int:
    """``round(keep * N)``, at least 1 and at most N."""
    return max(1, min(source_tokens, round(keep * source_tokens)))


def square_tokens_for_keep(source_tokens: int, keep: float) -> int:
    """The square grid count nearest to ``keep * N`` (at least 1): what a smaller square image gives."""
    side = max(1, round(math.sqrt(keep * source_tokens)))
    return min(side * side, source_tokens)


__all__ = ["CONFIG_KEY", "Deployment", "LazyTokenReducer", "TokenBudget", "TokenReducer", "check_reducer",
           "square_tokens_for_keep", "tokens_for_keep"]
