"""Errors shared by the commands."""


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2."""
