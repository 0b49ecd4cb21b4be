"""Hydra config groups of the medical vertical (found through ``pkg://dsvl_adapt_medical.conf``)."""
