"""Apply a token budget to a student, record it in its config, and restore it when the model is loaded."""

from __future__ import annotations

from typing import Any

from .contract import CONFIG_KEY, TokenBudget, TokenReducer


def recorded_budget(config: Any) -> TokenBudget | None:
    """The ``token_budget`` a model config records, or None."""
    raw = getattr(config, CONFIG_KEY, None)
    if not raw:
        return None
    return TokenBudget.model_validate(raw)


def image_tokens_of(model: Any, processor: Any | None = None) -> int:
    """Image tokens per image the language model reads: the budget's K (of which a masking method keeps N in the
    sequence), else the processor's (or the grid's)."""
    budget = recorded_budget(model.config)
    if budget is not None:
        return budget.image_tokens
    if processor is not None and getattr(processor, "num_image_tokens", None):
        return int(processor.num_image_tokens)
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def apply_token_budget(model: Any, processor: Any, reducer: TokenReducer, *, keep: float | None = None,
                       tokens: int | None = None) -> tuple[TokenBudget, dict[str, Any]]:
    """Reduce ``model`` and ``processor`` to the budget (``keep`` ratio or ``tokens`` K), record it in the config.

    Returns the recorded :class:`TokenBudget` and the method's figures. A model that already carries a budget
    is refused: budgets do not stack (reduce the unreduced student once).
    """
    if recorded_budget(model.config) is not None:
        raise ValueError(f"the student already carries a token budget ({getattr(model.config, CONFIG_KEY)}); "
                         "prune.tokens applies one budget to an unreduced model")
    source = int(processor.num_image_tokens)
    if tokens is not None:
        if tokens > source:
            raise ValueError(f"prune.tokens.tokens={tokens} exceeds the model's {source} image tokens per image")
        wanted = tokens / source
        image_tokens = reducer.image_tokens(source, wanted)
        if image_tokens != tokens:
            raise ValueError(f"prune.tokens.method={reducer.name} cannot give exactly {tokens} tokens (nearest: "
                             f"{image_tokens}); ask for prune.tokens.tokens={image_tokens} or a keep ratio")
    else:
        assert keep is not None
        image_tokens = reducer.image_tokens(source, keep)
    budget = TokenBudget(method=reducer.name, image_tokens=image_tokens, source_image_tokens=source,
                         keep=image_tokens / source, deploys=reducer.deploys, masks=getattr(reducer, "masks", False))
    figures = reducer.apply(model, processor, image_tokens)
    if int(processor.num_image_tokens) != budget.sequence_image_tokens:
        raise ValueError(f"token reducer {reducer.name!r} left the processor at {processor.num_image_tokens} image "
                         f"tokens, not the {budget.sequence_image_tokens} it promised")
    setattr(model.config, CONFIG_KEY, budget.model_dump(mode="json"))
    return budget, figures


def restore_token_budget(model: Any) -> TokenBudget | None:
    """Re-install the reducer a loaded model's config records (what :func:`dsvl_adapt.load` does)."""
    budget = recorded_budget(model.config)
    if budget is None:
        return None
    from ...errors import ModelLoadError
    from ...plugins import get_registry

    reducers = get_registry().token_reducers
    if budget.method not in reducers:
        raise ModelLoadError(f"the model's config records token_budget.method={budget.method!r}, which no installed "
                             f"plugin registers (registered: {', '.join(reducers.names())}); install the plugin "
                             "that shipped it")
    reducers.get(budget.method).restore(model, budget)
    return budget


__all__ = ["apply_token_budget", "image_tokens_of", "recorded_budget", "restore_token_budget"]
