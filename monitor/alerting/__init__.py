"""Notifiers (OpsGenie / Jira Service Management, Datadog, webhook) and their delivery loop.

A notifier turns one queued notice (open, close or remind an alert) into API calls. It
raises Retry when trying again can help (timeouts, 429, 5xx, a rejected key) and Refused
when the service rejected the request itself; the delivery loop does the rest.
"""


class Retry(Exception):
    def __init__(self, message: str, after: float | None = None):
        super().__init__(message)
        self.after = after  # seconds the service asked us to wait (Retry-After), if any


class Refused(Exception):
    pass
