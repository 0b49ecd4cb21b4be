"""The teacher's inputs for a student under a token budget, made from the student's batch.

In distillation both models read the same rows, but a reduced student's sequences hold K image tokens where
the teacher's hold N (and, for ``resolution``, smaller images). :func:`teacher_batch` rewrites a student batch
for the teacher: each run of K image-token ids becomes N (attention and labels follow), and the pixels are
resized to the teacher's image size (bicubic; so with ``resolution`` the teacher reads the same low-resolution
image the student reads, upsampled). The text, and so the answer positions, are the same in both, in order:
selecting answer positions by each batch's own labels pairs them one to one.
"""

from __future__ import annotations

import torch

from ...data.batches import IGNORE_INDEX


def needs_teacher_view(student_tokens: int, teacher_tokens: int, student_size: int, teacher_size: int) -> bool:
    return student_tokens != teacher_tokens or student_size != teacher_size


def teacher_batch(batch: dict[str, torch.Tensor], *, image_token_id: int, student_tokens: int, teacher_tokens: int,
                  teacher_image_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    """``batch`` (student form, right- or left-padded) rewritten with ``teacher_tokens`` per image."""
    rows_ids, rows_mask, rows_labels = [], [], []
    has_labels = "labels" in batch
    for i in range(batch["input_ids"].shape[0]):
        ids, mask = batch["input_ids"][i], batch["attention_mask"][i]
        labels = batch["labels"][i] if has_labels else None
        image = (ids == image_token_id).nonzero().flatten()
        if image.numel() % student_tokens:
            raise ValueError(f"a student sequence holds {image.numel()} image tokens, not a multiple of its budget "
                             f"{student_tokens}")
        pieces_ids, pieces_mask, pieces_labels, start = [], [], [], 0
        for first in image[::student_tokens].tolist():
            pieces_ids += [ids[start:first], ids.new_full((teacher_tokens,), image_token_id)]
            pieces_mask += [mask[start:first], mask.new_ones(teacher_tokens)]
            if labels is not None:
                pieces_labels += [labels[start:first], labels.new_full((teacher_tokens,), IGNORE_INDEX)]
            start = first + student_tokens
        rows_ids.append(torch.cat(pieces_ids + [ids[start:]]))
        rows_mask.append(torch.cat(pieces_mask + [mask[start:]]))
        if labels is not None:
            rows_labels.append(torch.cat(pieces_labels + [labels[start:]]))
    left_padded = bool((batch["attention_mask"][:, 0] == 0).any())
    out = {"input_ids": _stack(rows_ids, pad_id, left_padded), "attention_mask": _stack(rows_mask, 0, left_padded)}
    if has_labels:
        out["labels"] = _stack(rows_labels, IGNORE_INDEX, left_padded)
    for key, pixels in batch.items():
        if key.endswith("pixel_values"):
            out[key] = pixels
    if out["pixel_values"].shape[-1] != teacher_image_size:
        out["pixel_values"] = torch.nn.functional.interpolate(
            batch["pixel_values"].float(), size=(teacher_image_size, teacher_image_size), mode="bicubic",
            align_corners=False).to(batch["pixel_values"].dtype)
    return out


def _stack(rows: list[torch.Tensor], fill: int, left: bool) -> torch.Tensor:
    length = max(len(r) for r in rows)
    out = rows[0].new_full((len(rows), length), fill)
    for i, r in enumerate(rows):
        if left:
            out[i, length - len(r):] = r
        else:
            out[i, : len(r)] = r
    return out


__all__ = ["needs_teacher_view", "teacher_batch"]
