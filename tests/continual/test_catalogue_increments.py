"""The e-commerce generator's narrowed catalogue, which benchmarks/continual.py splits into weekly increments."""

from __future__ import annotations

import pytest
from dsvl_adapt_ecommerce.generator import generate_rows


def test_a_narrowed_catalogue_asks_only_its_values_and_new_items_only_the_new_ones():
    shop = {"category": ("shirt", "mug"), "colour": ("red", "blue"), "pattern": ("solid",)}
    rows = generate_rows("train", 40, seed=1, image_size=32, attributes=shop)
    assert {row["meta"]["category"] for row in rows} <= {"shirt", "mug"}
    assert {row["meta"]["colour"] for row in rows} <= {"red", "blue"}
    assert {row["answer"] for row in rows} <= {"shirt", "mug", "red", "blue", "solid"}
    week = generate_rows("train", 20, seed=1, image_size=32, attributes={**shop, "category": ("shirt", "mug", "shoe")},
                         asked={"category": ("shoe",)})
    assert {row["answer"] for row in week} == {"shoe"} and {row["meta"]["category"] for row in week} == {"shoe"}


def test_the_default_catalogue_is_unchanged_by_the_new_parameters():
    """The digest of the default rows (images included), as the generator made them before it took ``attributes``."""
    import hashlib

    digest = hashlib.sha256()
    for split in ("train", "test"):
        for r in generate_rows(split, 40, seed=3, image_size=32):
            digest.update((r["id"] + r["question"] + r["answer"] + str(sorted(r["meta"].items()))).encode()
                          + r["image"].tobytes())
    assert digest.hexdigest() == "b57ba1461eb88ab16b513a6cc21ebeb5d05b5a3d49acfddecd38006c890e4cb3"
    with pytest.raises(ValueError, match="unknown attribute value"):
        generate_rows("test", 4, attributes={"category": ("spaceship",)})
