"""Errors the CLI reports: one sentence on stderr and a documented exit code.

    CliError             exit 1: a user error (bad query, refused, not deployed...)
    ├── UsageError       exit 2: the command line itself is wrong
    ├── PartialAnswer    exit 3: the answer came, but some nodes did not contribute
    └── Unreachable      exit 4: the pxo cloud could not be reached
"""

from __future__ import annotations

EXIT_OK, EXIT_USER, EXIT_USAGE, EXIT_PARTIAL, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


class CliError(Exception):
    exit_code = EXIT_USER

    def __init__(self, message: str, *, detail: str = "", line: int = 0, column: int = 0,
                 hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail  # extra lines shown under the message
        self.line = line  # where in a query the error is (1-based; 0: nowhere)
        self.column = column
        self.hint = hint


class PartialAnswer(CliError):
    exit_code = EXIT_PARTIAL


class Unreachable(CliError):
    exit_code = EXIT_UNREACHABLE
