"""Continual adaptation: a finished run updated with new rows, as a lineage of versions (docs/continual.md).

- :mod:`.settings`: the validated ``update`` config section (strategy, replay buffer, LwF, EWC);
- :mod:`.lineage`: reading a parent run (finished? its artifacts, its manifest hash), naming the next version;
- :mod:`.buffer`: the replay buffer, selected and stored with each version;
- :mod:`.losses`: the LwF and EWC terms added to the fine-tune loss;
- :mod:`.evaluate`: a deployed artifact scored on a set of rows (the update's scorecard, ``rescore``);
- :mod:`.stages`: the update's stages; :mod:`.update`: composing and running an update, and ``rescore``.
"""
