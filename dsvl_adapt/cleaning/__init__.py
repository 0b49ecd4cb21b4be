"""Data cleaning before training (issue 19; docs/cleaning.md).

Level 1 checks integrity, duplicates, leakage and a vertical's own rules; level 2 ranks likely label
errors and image-question mismatches from cross-fitted answer probabilities of a cheap model
(cleanlab); level 3 is a review page a person works through, whose decisions file the next ``clean``
or ``run`` applies. Checks come through the ``dsvl_adapt_register_data_checks`` hook. Nothing here
modifies the user's files: the result is a report and a *cleaned view* (row ids dropped or fixed)
applied when the data loads.
"""

from .findings import Finding

__all__ = ["Finding"]
