"""Hydra config groups of the ecommerce vertical (found through ``pkg://dsvl_adapt_ecommerce.conf``)."""
