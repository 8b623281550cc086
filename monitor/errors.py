"""Errors shared by the commands."""


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2."""


class WriteConflict(Exception):
    """A compare-and-swap write lost: the stored document changed since it was read (HTTP 409)."""


class StoreError(Exception):
    """A state kept elsewhere (a ConfigMap: monitor.alerting.docstore) cannot be read or written."""
