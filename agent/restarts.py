"""When to restart a container that crashed: exponential back-off that resets once a container has run
long enough, and the point at which a crash loop is reported instead of hidden. Pure (no clock of its
own, no I/O), so the policy is unit-tested on its own; agent/state.py applies it."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import option


@dataclass(frozen=True)
class RestartPolicy:
    """The ``restart:`` block of agent.yaml."""

    #: Restart crashed containers that should run (false: leave them exited, still reported unhealthy).
    enabled: bool = True
    #: First delay after a crash; doubled for every crash in a row, up to ``max_delay_s``.
    initial_delay_s: float = option(1.0, gt=0)
    max_delay_s: float = option(300.0, gt=0)
    #: A container that ran this long before crashing starts the count afresh.
    reset_after_s: float = option(120.0, gt=0)
    #: This many crashes in a row are reported as a crash loop (the restarts go on, further apart).
    crash_loop_after: int = option(5, ge=1)


@dataclass(frozen=True, slots=True)
class Crash:
    """What one crash means: how many in a row, when to restart, whether it is a loop."""

    in_a_row: int
    delay_s: float
    loop: bool


def on_crash(policy: RestartPolicy, previous_in_a_row: int, ran_for_s: float) -> Crash:
    in_a_row = 1 if ran_for_s >= policy.reset_after_s else previous_in_a_row + 1
    delay = min(policy.initial_delay_s * 2 ** (in_a_row - 1), policy.max_delay_s)
    return Crash(in_a_row, delay, in_a_row >= policy.crash_loop_after)


def describe(crash: Crash, what: str) -> str:
    """The reason the coordinator shows on the unhealthy instance."""
    if crash.loop:
        return f"crash loop: {what}, {crash.in_a_row} times in a row; next restart in {crash.delay_s:g} s"
    return f"{what}; restarting in {crash.delay_s:g} s"
