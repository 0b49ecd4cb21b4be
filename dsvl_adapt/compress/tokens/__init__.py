"""``prune.tokens``: a budget of K image tokens per image, carried by the model itself (issue 17).

Modules: :mod:`.contract` (the :class:`~.contract.TokenReducer` protocol, torch-free), :mod:`.budget`
(apply / record / restore), :mod:`.aligner` (where a reducer sits), one module per method
(:mod:`.select`, :mod:`.resolution`), :mod:`.teacher_view` (the teacher's inputs in distillation) and
:mod:`.stage` (the pipeline stage). See docs/tokens.md.
"""
