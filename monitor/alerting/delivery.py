"""Drain the outbox: each notifier gets its notices in order, retried with backoff until accepted.

One notifier failing does not hold back another. Within a notifier, order is kept (a close
never overtakes its open): a notice that must be retried stops that notifier's pass.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter

from monitor.alerting import Refused, Retry

log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0


def backoff(attempts: int, asked: float | None = None) -> float:
    """Seconds before the next try: 1, 2, 4 ... jittered by ±20 %, never more than 5 min (the cap
    includes the jitter); a Retry-After wins, within the same cap."""
    if asked is not None and asked >= 0:
        return min(asked, MAX_BACKOFF)
    return min(MAX_BACKOFF, 2.0 ** min(attempts, 16) * random.uniform(0.8, 1.2))  # no overflow, ever


class Delivery:
    def __init__(self, state, notifiers: list):
        self.state = state
        self.notifiers = {n.name: n for n in notifiers}
        self.sent: Counter[tuple[str, str]] = Counter()  # (notifier, action) accepted
        self.errors: Counter[str] = Counter()  # notifier -> failed attempts
        self.dead: Counter[str] = Counter()
        self._draining = threading.Lock()

    def drain(self, now: float | None = None) -> int:
        """One pass over every notifier; returns how many notices were accepted. The cycle and the
        delivery loop both drain: a pass already under way makes another one a no-op, so no
        notice is sent twice by two threads."""
        if not self._draining.acquire(blocking=False):
            return 0
        try:
            return self._drain(now)
        finally:
            self._draining.release()

    def _drain(self, now: float | None) -> int:
        done = 0
        for name, notifier in self.notifiers.items():
            for item in self.state.pending(name, now):
                try:
                    request_id = notifier.send(item.action, item.notice)
                except Retry as e:
                    wait = backoff(item.attempts, e.after)
                    self.state.failed(item.id, str(e), getattr(self.state, "clock", time.time)() + wait)
                    self.errors[name] += 1
                    log.warning("%s: %s %s/%s not delivered (attempt %d), retry in %.0fs: %s", name, item.action,
                                item.subject, item.rule, item.attempts + 1, wait, e)
                    break
                except Refused as e:
                    self.state.failed(item.id, str(e), None)
                    self.dead[name] += 1
                    log.error("%s refused %s %s/%s for good (kept in the state file): %s", name, item.action,
                              item.subject, item.rule, e)
                    continue
                self.state.delivered(item.id)
                self.sent[(name, item.action)] += 1
                done += 1
                log.info("%s: %s %s/%s delivered%s", name, item.action, item.subject, item.rule,
                         f" (requestId {request_id})" if request_id else "")
        return done
