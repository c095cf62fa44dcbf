"""The errors qcsfer raises on purpose: bad input the user can fix, each with a clear message.

The command line prints these as one line and exits 2; anything else is a bug and keeps its
traceback. Each type also derives from the built-in it replaces (ValueError, RuntimeError,
FileNotFoundError, ImportError), so code that caught those before still catches them.
Torch-free: the ONNX backend raises these where torch is not installed.
"""

from __future__ import annotations


class QcsferError(Exception):
    """A problem with what was asked (a file, an option, the data), explained by its message."""


class UsageError(QcsferError, ValueError):
    """An option or argument that cannot work as given."""


class ConfigError(UsageError):
    """A training configuration that is invalid; the message names the key."""


class WeightsError(QcsferError, ValueError):
    """A weights file, model card or exported model that cannot be used as asked."""


class DatasetError(QcsferError, ValueError):
    """A dataset on disk that does not match what its reader expects; the message says where."""


class ImageError(QcsferError, ValueError):
    """An input that cannot be used as an image; the message names it and says why."""


class TrainingError(QcsferError, RuntimeError):
    """A training run that cannot start or continue (resume mismatch, diverged loss...)."""


class DeviceError(QcsferError, RuntimeError):
    """A requested device (cuda, mps) that is not available."""


class ExportError(QcsferError, RuntimeError):
    """An export that failed its check against PyTorch."""


class NotFoundError(QcsferError, FileNotFoundError):
    """A file or folder named by the user that does not exist."""


class MissingDependencyError(QcsferError, ImportError):
    """An optional package a feature needs is not installed; the message says how to get it."""
