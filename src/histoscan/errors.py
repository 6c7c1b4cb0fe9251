"""Errors that the CLI turns into one clear line and a non-zero exit."""


class HistoscanError(Exception):
    """A user-facing problem: bad input, a missing file, an unusable model."""


class DataError(HistoscanError):
    """A data source or patch that cannot be used."""


class ModelError(HistoscanError):
    """A model file that cannot be loaded or does not fit the data."""
