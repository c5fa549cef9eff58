"""mmrag's errors: one base, each kind with the exit code the CLI returns for it.

The CLI maps an error to its exit code in one place (`MmragError.exit_code`); the HTTP
server maps `http_status`. Library code raises these and never prints or exits.

| code | meaning |
| --- | --- |
| 0 | ok (files that failed are listed in the report) |
| 1 | the run failed (store down, model failed to load, disk full, ...) |
| 2 | bad usage or configuration (arguments, settings, a model that does not match the collection) |
| 3 | a lock is held by another process |
| 4 | some files failed and `--strict` was given |
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_PARTIAL = 4

EXIT_CODES = {
    EXIT_OK: "ok (files that failed are listed in the report)",
    EXIT_FAILED: "the run failed",
    EXIT_USAGE: "bad usage or configuration",
    EXIT_LOCKED: "a lock is held by another process",
    EXIT_PARTIAL: "some files failed, with --strict",
}


class MmragError(Exception):
    """Base of every error mmrag raises on purpose: printed as one line, without a traceback."""

    exit_code: int = EXIT_FAILED
    http_status: int = 500

    def __init__(self, message: str = "", *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(MmragError, ValueError):
    """Bad arguments or configuration: exit 2, HTTP 400."""

    exit_code = EXIT_USAGE
    http_status = 400


class NotFoundError(MmragError, LookupError):
    """A collection, point or file that does not exist: exit 1, HTTP 404."""

    exit_code = EXIT_FAILED
    http_status = 404


class LockHeldError(MmragError):
    """Another process holds the lock: exit 3, HTTP 409."""

    exit_code = EXIT_LOCKED
    http_status = 409


class RunFailed(MmragError, RuntimeError):
    """The run itself failed: exit 1, HTTP 503."""

    exit_code = EXIT_FAILED
    http_status = 503


def exit_code_table() -> str:
    """The exit-code table, as printed at the end of every `--help`."""
    return "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())
