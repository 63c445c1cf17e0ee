"""The exceptions charrnn raises for problems a user can fix, each with the exit code the CLI uses.

Every message is one line that names the problem and says what to do about it.
"""


class CharRNNError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class DataError(CharRNNError):
    """The text to train or evaluate on cannot be used (missing, empty, binary, wrong encoding, too short)."""

    exit_code = 1


class ConfigError(CharRNNError):
    """Options that make no sense together or do not fit the data or checkpoint."""

    exit_code = 1


class CheckpointError(CharRNNError):
    """A checkpoint is missing, corrupt, foreign, from a newer charrnn, or does not match its own config."""

    exit_code = 3


class DivergedError(CharRNNError):
    """Training produced a NaN or infinite loss or gradient."""

    exit_code = 4


class OutputError(CharRNNError):
    """A file could not be written (unwritable folder, disk full)."""

    exit_code = 5
