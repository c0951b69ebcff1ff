"""User-facing errors.

Every mistake a user can make (a missing file, a bad option, an empty class) raises a subclass of
:class:`ShiftkitError` whose message names the file, row or option. The CLI prints that single line
and exits with code 2; anything else is a bug and keeps its traceback.
"""


class ShiftkitError(Exception):
    """Base class for errors caused by user input, not by a bug."""


class DataError(ShiftkitError):
    """A dataset, manifest or image cannot be used as given."""


class ImageReadError(DataError):
    """One image file cannot be decoded."""


class ModelError(ShiftkitError):
    """An architecture, weight file or checkpoint cannot be used."""


class WeightsNotFoundError(ModelError):
    """Pre-trained weights are neither cached nor downloadable."""


class ConfigError(ShiftkitError):
    """An option value is out of range or inconsistent with the others."""


class OutputError(ShiftkitError, OSError):
    """An output cannot be written (read-only or full disk, a folder in use by another run). Also an
    :class:`OSError`, so that code which tolerates a failed optional write (a cache) still catches it."""
