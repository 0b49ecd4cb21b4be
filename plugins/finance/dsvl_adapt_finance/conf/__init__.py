"""Hydra config groups of the finance vertical (found through ``pkg://dsvl_adapt_finance.conf``)."""
