"""How many restarts the healer may still make: pure functions over the actions already taken.

Bounded as the remediation tools operators trust bound themselves (draino's replacements per
hour, MachineHealthCheck's maxUnhealthy): per component within a sliding window, a global cap
over all components, and a cooldown after each action on a component.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    per_component: int = 2  # actions on one component ...
    window: float = 3600.0  # ... within this many seconds
    global_max: int = 5  # actions on all components together within the window
    cooldown: float = 300.0  # seconds after an action before another on the same component
    verify: float = 300.0  # seconds an action has to show the queue moving
    after_failed_check: str = "retry"  # retry: another restart while the budget lasts; stop: page at once


# restarts the API server did not take: they restarted nothing, so they cost no budget and start no cooldown
FREE = ("blocked", "refused")


@dataclass(frozen=True)
class Action:
    component: str
    at: float
    outcome: str = "pending"  # pending | healed | failed | error | blocked | refused (FREE: nothing restarted)


@dataclass(frozen=True)
class Allowance:
    allowed: bool
    why: str  # "" when allowed; else one line: budget spent, global cap, cooldown
    left: int  # actions left for the component in the window
    exhausted: bool  # no action will be allowed until the window moves on (not a cooldown)


def left(actions: list[Action], component: str, now: float, b: Budget) -> int:
    mine = [a for a in actions if a.component == component and now - a.at < b.window and a.outcome not in FREE]
    return max(0, b.per_component - len(mine))


def allowance(actions: list[Action], component: str, now: float, b: Budget, wait_until: float = 0.0) -> Allowance:
    """wait_until: a time before which nothing is tried again (a PodDisruptionBudget's Retry-After)."""
    recent = [a for a in actions if now - a.at < b.window and a.outcome not in FREE]
    mine = [a for a in recent if a.component == component]
    n_left = max(0, b.per_component - len(mine))
    if n_left == 0:
        return Allowance(False, f"budget spent: {len(mine)} restart(s) of {component} in the last "
                                f"{int(b.window // 60)}m (limit {b.per_component})", 0, True)
    if len(recent) >= b.global_max:
        return Allowance(False, f"global cap reached: {len(recent)} restart(s) in the last "
                                f"{int(b.window // 60)}m (limit {b.global_max})", n_left, True)
    if b.after_failed_check == "stop" and mine and max(mine, key=lambda a: a.at).outcome == "failed":
        return Allowance(False, f"the last restart of {component} did not heal it (after_failed_check: stop)",
                         n_left, True)
    last = max((a.at for a in mine), default=None)
    if last is not None and now - last < b.cooldown:
        return Allowance(False, f"cooldown: last restart of {component} tried {int(now - last)}s ago "
                                f"(cooldown {int(b.cooldown)}s)", n_left, False)
    if now < wait_until:
        return Allowance(False, f"asked to wait {int(wait_until - now)}s more (Retry-After)", n_left, False)
    return Allowance(True, "", n_left, False)
