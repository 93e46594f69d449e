"""User-facing errors.

Anything raised as `NstError` is a problem with the user's input (a file, a flag, weights that do not fit): the
command line prints its message as one line and exits non-zero, never a traceback.
"""

from __future__ import annotations


class NstError(Exception):
    """An error whose message is meant for the user, shown as one line."""


class ImageError(NstError):
    """An image could not be read, decoded or written."""


class WeightsError(NstError):
    """Weights are missing, malformed, unsafe, or do not fit the model."""


class DownloadError(NstError):
    """A download failed or its content did not match the expected hash."""


class TrainingDiverged(NstError):
    """The loss or the gradients became NaN or infinite during training."""


class StyleError(NstError, ValueError):
    """A style the model cannot use: an index outside its style table, weights of the wrong length, a style
    image for a model that takes table indices."""


class InputError(NstError, ValueError):
    """Content, masks or conditions of a shape or size the model cannot take (raised while tracing, from the
    shapes alone)."""
