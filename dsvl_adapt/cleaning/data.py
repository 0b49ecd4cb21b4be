"""What a data check sees: the loaded splits, the ``clean`` settings and measurements shared by checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..data.leakage import image_sha256, normalize_question
from ..data.loading import Split

if TYPE_CHECKING:  # pragma: no cover
    from ..config import CleanSection
    from .crossfit import AnswerProbabilities


@dataclass
class CleaningData:
    """The data being cleaned. Measurements several checks need (pixel digests, perceptual hashes, the
    cross-fitted answer probabilities) are computed once, on first use."""

    vertical: str
    splits: dict[str, Split]
    settings: "CleanSection"
    log: Callable[[str], None] = print
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def pixel_digests(self, split: str) -> list[str]:
        """SHA-256 of each row's decoded pixels (the same picture in another file or format matches)."""
        return self.memo(("sha", split), lambda: [image_sha256(row) for row in self.splits[split].rows])

    def perceptual_hashes(self, split: str) -> np.ndarray:
        """Each row's 64-bit perceptual hash (imagehash's pHash) as an unsigned integer."""
        return self.memo(("phash", split), lambda: _phashes(self.splits[split]))

    def thumbnails(self, split: str) -> np.ndarray:
        """Each row's picture as a 32x32 RGB array in [0, 1] (to confirm a perceptual-hash match)."""
        return self.memo(("thumb", split), lambda: np.stack([
            np.asarray(row.image.convert("RGB").resize((32, 32)), dtype=np.float32) / 255.0
            for row in self.splits[split].rows]))

    def questions(self, split: str) -> list[str]:
        return self.memo(("question", split), lambda: [normalize_question(r.question) for r in self.splits[split].rows])

    def answer_probabilities(self) -> "AnswerProbabilities":
        """Out-of-sample answer probabilities of every train row (level 2; :mod:`.crossfit`)."""
        from .crossfit import cross_fitted_probabilities

        return self.memo("probabilities", lambda: cross_fitted_probabilities(
            self.splits["train"].rows, folds=self.settings.folds, seed=0))


def _phashes(split: Split) -> np.ndarray:
    import imagehash

    values = []
    for row in split.rows:
        bits = imagehash.phash(row.image).hash.flatten()
        values.append(int("".join("1" if bit else "0" for bit in bits), 2))
    return np.array(values, dtype=np.uint64)


def hamming(value: int | np.uint64, values: np.ndarray) -> np.ndarray:
    """Bits in which ``value`` differs from each of ``values`` (64-bit hashes)."""
    return np.bitwise_count(np.bitwise_xor(values, np.uint64(value)))
