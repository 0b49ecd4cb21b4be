"""The e-commerce vertical's own data check (``dsvl-adapt clean``, level 1): an answer must be a value of the
attribute the question asks (a colour question answered 'mug' is mislabelled), and a product title in
``meta.title`` must not name another colour than the row's colour answer."""

from __future__ import annotations

import re
from typing import Iterable

from dsvl_adapt.cleaning import Finding

from .generator import ATTRIBUTES, COLOURS

_ASKS = (("colour", re.compile(r"\b(colou?r)\b")), ("pattern", re.compile(r"\b(pattern|solid|striped|dotted)\b")),
         ("category", re.compile(r"\b(kind|category|type|product)\b")))


def attribute_asked(question: str) -> str | None:
    """The attribute a question asks for (colour is checked first: 'What colour is this product?')."""
    text = question.casefold()
    for attribute, pattern in _ASKS:
        if pattern.search(text):
            return attribute
    return None


def catalogue_rules(data) -> Iterable[Finding]:
    for name, split in data.splits.items():
        for row in split.rows:
            attribute = attribute_asked(row.question)
            answer = " ".join(row.answer.casefold().split()).rstrip(".")
            if attribute is not None and answer not in ATTRIBUTES[attribute]:
                yield Finding(name, row.id, "ecommerce_not_attribute_value",
                              f"the question asks the {attribute}, but {row.answer!r} is not one of "
                              f"{', '.join(ATTRIBUTES[attribute])}", score=0.9, action="flag")
            title = row.meta.get("title")
            if attribute == "colour" and isinstance(title, str) and answer in COLOURS:
                named = [c for c in COLOURS if re.search(rf"\b{c}\b", title.casefold())]
                if named and answer not in named:
                    yield Finding(name, row.id, "ecommerce_title_colour",
                                  f"the product title {title!r} names {', '.join(named)}, the answer is {answer!r}",
                                  score=0.85, action="flag", suggestion=named[0] if len(named) == 1 else None)
