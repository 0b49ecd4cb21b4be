"""The ``update`` section of a run's configuration: what an update run continues from and how it learns.

A run made by ``dsvl-adapt update`` carries this section (a run made by ``dsvl-adapt run`` has none). It is
validated like every other section: an unknown strategy or key fails before any stage with its dotted path.
This module imports nothing of the rest of the package, so :mod:`dsvl_adapt.config` can import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: Strategies of an update (docs/continual.md): which rows the fresh LoRA adapter learns from and which loss keeps
#: the earlier knowledge.
STRATEGIES = ("naive", "replay", "replay+lwf", "replay+ewc")
Strategy = Literal["naive", "replay", "replay+lwf", "replay+ewc"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ReplaySettings(_Section):
    """The replay buffer: earlier rows kept with each version and mixed into the next update's training rows."""

    size: int = Field(256, ge=1, description="rows the buffer holds; each version stores its own buffer")
    selection: Literal["random", "balanced"] = Field(
        "balanced", description="random: a seeded sample of the candidate rows; balanced: as many rows of each "
                                "reference answer as the size allows (rare answers kept)")
    new_share: float = Field(
        0.5, gt=0, le=1, description="share of the rows of the NEW increment among the candidates for the next "
                                     "buffer, at most (the rest are the earlier buffer's rows): older increments "
                                     "keep a place")
    training_share: float = Field(
        0.5, ge=0, lt=1, description="least share of the update's training rows (fine-tune and distillation) that "
                                     "are the increment's new rows: they are repeated when the replayed rows "
                                     "outnumber them, so a large buffer does not drown them (0: no repetition)")


class LwfSettings(_Section):
    """Learning without forgetting: the previous teacher's answers on old-looking inputs (the replay rows)."""

    weight: float = Field(1.0, gt=0, description="weight of KL(previous teacher || teacher) on replay rows")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of that KL term (scaled by T^2)")


class EwcSettings(_Section):
    """Elastic weight consolidation on the fresh LoRA adapter: a Fisher-weighted pull towards its start."""

    weight: float = Field(100.0, gt=0, description="lambda of the penalty lambda/2 x sum F (theta - theta0)^2")
    fisher_batches: int = Field(8, ge=1, description="batches of replay rows the diagonal Fisher is estimated on")


class FullPhaseSettings(_Section):
    """A full-parameter phase before the fresh adapter, for models a low-rank adapter barely moves.

    Its schedule (learning rate, batch size, warm-up, evaluation, precision) is the run's ``finetune.full``; only
    the step count is its own. It learns from the same rows, with the same strategy terms, as the adapter.
    """

    when: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: for models from a reference preset (random weights, trained by the first run's "
                            "full phase), where a LoRA adapter alone barely learns new answers; always; never "
                            "(a published checkpoint under auto: LoRA only)")
    steps: int = Field(400, ge=0, description="full-parameter steps before the adapter (finetune.full's schedule; "
                                              "400 at batch 8 is about 7 passes over 200 new + 256 replay rows)")


class UpdateSection(_Section):
    """An update of a finished run (its parent) with new rows (``data.source``)."""

    parent: Path = Field(description="the finished run folder this version updates (never written to)")
    parent_manifest_sha256: str = Field(description="sha256 of the parent's manifest.json when the update began")
    version: int = Field(2, ge=2, description="this version's number in its lineage (the first run is version 1)")
    strategy: Strategy = Field("replay", description="naive | replay | replay+lwf | replay+ewc (docs/continual.md)")
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    lwf: LwfSettings = Field(default_factory=LwfSettings)
    ewc: EwcSettings = Field(default_factory=EwcSettings)
    full: FullPhaseSettings = Field(default_factory=FullPhaseSettings)
    reprune: bool = Field(False, description="prune the new teacher again (the parent's prune settings) instead of "
                                             "keeping the parent's pruned student structure")

    @property
    def replays(self) -> bool:
        return self.strategy != "naive"
