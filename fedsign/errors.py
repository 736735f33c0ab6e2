"""User-facing errors: each is reported as one clear line (exit code 2), never a stack trace."""


class FedsignError(Exception):
    """An error caused by the user's input (config, dataset, checkpoint)."""


class ConfigError(FedsignError):
    """A config key or value that is unknown or out of range."""


class DatasetError(FedsignError):
    """A dataset that is missing, malformed, or cannot be obtained."""


class CheckpointError(FedsignError):
    """A checkpoint that is not a valid fedsign safetensors file, or does not fit its model."""
