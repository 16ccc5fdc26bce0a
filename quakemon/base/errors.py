"""Exceptions a user can cause, each mapped to a CLI exit code.

Every message names the file, key or station, the expected and the actual value.
"""


class QuakemonError(Exception):
    """Base class for errors quakemon reports without a traceback (exit code 1)."""

    exit_code = 1


class ConfigError(QuakemonError):
    """A config file or CLI flag is invalid (exit code 2)."""

    exit_code = 2


class CheckpointError(QuakemonError):
    """A checkpoint is missing, corrupt, unsafe or inconsistent with its metadata."""


class ContractError(QuakemonError):
    """Data does not fit a model's input contract (sampling rate, components, window length)."""


class PretrainedWeightsError(QuakemonError):
    """Pretrained backbone weights are not available offline."""
