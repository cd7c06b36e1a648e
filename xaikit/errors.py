"""Exceptions raised by xaikit. Each message names the problem and the fix."""


class XaikitError(Exception):
    """Base class for every error xaikit raises on purpose."""


class UnsupportedModelError(XaikitError, TypeError):
    """The model is not a timm Vision Transformer xaikit can introspect."""


class InvalidParameterError(XaikitError, ValueError):
    """A method name, a parameter or a target is not valid."""


class WeightsUnavailableError(XaikitError, RuntimeError):
    """Pretrained weights could not be downloaded or found locally."""


class DataIntegrityError(XaikitError, ValueError):
    """A downloaded or local data file is corrupted, truncated or of the wrong format."""


class UnsafeArchiveError(DataIntegrityError):
    """An archive member would be extracted outside its target folder."""


class DataUnavailableError(XaikitError, FileNotFoundError):
    """A data set is neither cached locally nor downloadable."""


class TrainingError(XaikitError, RuntimeError):
    """A training run produced no usable model (no step trained, or chance-level accuracy)."""
