"""Errors that a user sees. Each names the input at fault and how to fix it."""

from __future__ import annotations


class DsvlAdaptError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(DsvlAdaptError):
    """The composed configuration is invalid (a field, its value, what is allowed)."""


class PluginError(DsvlAdaptError):
    """A plugin failed to import, raised in a hook, or registered something invalid."""


class DataError(DsvlAdaptError):
    """A dataset row, file or image is unusable (names its source and line)."""


class ModelLoadError(DsvlAdaptError):
    """A checkpoint directory cannot be loaded safely."""


class StageError(DsvlAdaptError):
    """A pipeline stage failed; what earlier stages produced is kept."""
