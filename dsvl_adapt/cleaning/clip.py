"""Optional level 2 signal: image-text similarity from a local CLIP-style checkpoint (``clean.clip.path``).

The text is the question and the given answer. Similarity is CLIPScore (Hessel et al., 2021):
``2.5 * max(cosine, 0)``, on which the seed's cut-off of 0.7 (``clean.clip.threshold``) sits where a raw
CLIP cosine of 0.28 does. Nothing is downloaded: transformers reads the folder with ``local_files_only``.
Without ``clean.clip.path`` the check finds nothing and says so in the report.
"""

from __future__ import annotations

from typing import Iterable

from .data import CleaningData
from .findings import CheckSkipped, Finding

CLIPSCORE_WEIGHT = 2.5
BATCH = 32


def clip_similarity(data: CleaningData) -> Iterable[Finding]:
    settings = data.settings.clip
    if settings.path is None:
        raise CheckSkipped("no clean.clip.path (a local CLIP checkpoint) given")
    scores = clip_scores(settings.path, [r.image for r in data.splits["train"].rows],
                         [f"{r.question} {r.answer}" for r in data.splits["train"].rows])
    findings = []
    for row, score in zip(data.splits["train"].rows, scores):
        if score < settings.threshold:
            findings.append(Finding("train", row.id, "clip_mismatch",
                                    f"image-text similarity (CLIPScore) {score:.2f} < clean.clip.threshold="
                                    f"{settings.threshold}", score=round(min(1.0, 1 - score / 2.5), 4),
                                    action="flag"))
    return findings


def clip_scores(path, images, texts) -> list[float]:
    """CLIPScore of each (image, text) pair with the transformers CLIP checkpoint in ``path``."""
    import torch
    from transformers import AutoModel, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"clean.clip.path: {path} is not a transformers CLIP checkpoint ({exc})") from None
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            batch = processor(text=list(texts[start:start + BATCH]), images=list(images[start:start + BATCH]),
                              return_tensors="pt", padding=True, truncation=True)
            out = model(**batch)
            image = torch.nn.functional.normalize(out.image_embeds, dim=-1)
            text = torch.nn.functional.normalize(out.text_embeds, dim=-1)
            cosine = (image * text).sum(-1)
            scores += (CLIPSCORE_WEIGHT * cosine.clamp(min=0)).tolist()
    return scores
