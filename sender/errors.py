"""Errors that the CLI turns into exit codes (see CLI.md: 2 bad input, 3 lock held)."""


class UsageError(Exception):
    """Bad input or usage: the CLI prints the message as one line and exits 2."""


class LockHeld(Exception):
    """Another sender holds the file lock: the CLI prints the message and exits 3."""
