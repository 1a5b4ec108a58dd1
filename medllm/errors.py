"""Errors users see. Each carries a message that names what is wrong and how to fix it.

The CLI prints ``str(error)`` to stderr and exits non-zero without a traceback; library users
catch :class:`MedllmError`.
"""

from __future__ import annotations


class MedllmError(Exception):
    """Base class: a problem the user can fix (bad input, missing model/data/store)."""

    exit_code = 1


class ConfigError(MedllmError):
    """Invalid settings, preset or config file."""

    exit_code = 2


class ModelNotAvailableError(MedllmError):
    """A model cannot be found locally or fetched from the hub."""


class DataError(MedllmError):
    """Bad input data: names the file, record and field."""

    def __init__(
        self, message: str, *, path: object = None, record: object = None, field: str | None = None
    ):
        where = []
        if path is not None:
            where.append(str(path))
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ": ".join([", ".join(where)]) + ": " if where else ""
        super().__init__(prefix + message)
        self.path, self.record, self.field = path, record, field
        self.reason = message  # without the file / record / field it names


class StoreError(MedllmError):
    """The vector/keyword store is missing, locked or inconsistent."""
