"""The account state machine of billing-v1.md §8, pure: every transition takes an explicit `now`."""

from dataclasses import dataclass, replace

from protocol.timefmt import format_time

DAY = 86400
GRACE = 15 * DAY  # overdue this long unpaid: downgraded
REMINDER_EVERY = 3 * DAY

ACTIVE, OVERDUE, DOWNGRADED = "active", "overdue", "downgraded"


@dataclass(frozen=True)
class Account:
    state: str = ACTIVE
    since: int = 0  # when the current state began
    overdue_since: int | None = None  # the payment failure that started this unpaid episode
    reminders: int = 0  # reminders sent in this episode

    @property
    def downgrade_at(self) -> int | None:
        return None if self.overdue_since is None else self.overdue_since + GRACE

    def next_reminder_at(self) -> int | None:
        """Reminders fall on days 3, 6, 9 and 12 of the episode; day 15 is the downgrade itself."""
        if self.state != OVERDUE or self.overdue_since is None:
            return None
        at = self.overdue_since + (self.reminders + 1) * REMINDER_EVERY
        return at if at < self.overdue_since + GRACE else None


@dataclass(frozen=True)
class Action:
    kind: str  # payment_failed | reminder | downgraded | paid
    at: int  # when it takes effect (a late tick still downgrades at overdue_since + 15 days)
    number: int = 0  # reminder number in the episode


def effective(acc: Account, now: int) -> str:
    """The state at ``now`` even when no tick has run since the grace period ran out."""
    if acc.state == OVERDUE and acc.downgrade_at is not None and now >= acc.downgrade_at:
        return DOWNGRADED
    return acc.state


def effective_since(acc: Account, now: int) -> tuple[str, int]:
    """effective's state and when it began: a downgrade no tick has recorded began when the grace
    period ran out, not at the payment failure."""
    state = effective(acc, now)
    if state != acc.state and state == DOWNGRADED and acc.downgrade_at is not None:
        return state, acc.downgrade_at
    return state, acc.since


class OutOfOrder(ValueError):
    """A change dated before the account's current state began (`account ... --now`, a replay, a
    clock stepped back): a payment dated before the downgrade it ends made a downgraded period
    that ends before it starts, and every bill of the provider failed on it."""


def _not_before(acc: Account, now: int) -> None:
    if now < acc.since:
        raise OutOfOrder(f"the account is {acc.state} since {format_time(acc.since)}: a change dated "
                         f"{format_time(now)} would come before it")


def payment_failed(acc: Account, now: int) -> tuple[Account, list[Action]]:
    """A failure starts an episode; a second failure inside the episode changes nothing."""
    _not_before(acc, now)
    if acc.state != ACTIVE:
        return acc, []
    return Account(OVERDUE, now, now, 0), [Action("payment_failed", now)]


def paid(acc: Account, now: int) -> tuple[Account, list[Action]]:
    """Paying the unpaid invoice and the grace-period charges ends the episode (tick first)."""
    acc, actions = tick(acc, now)
    _not_before(acc, now)
    if acc.state == ACTIVE:
        return acc, actions
    return Account(ACTIVE, now), [*actions, Action("paid", now)]


def tick(acc: Account, now: int) -> tuple[Account, list[Action]]:
    """Due reminders and the downgrade up to ``now``.

    A tick that runs late sends only the latest reminder due (a burst of stale reminders helps no
    one) but counts them all, and dates the downgrade at the end of the grace period.
    """
    if acc.state != OVERDUE or acc.overdue_since is None:
        return acc, []
    actions: list[Action] = []
    due, n = None, acc.reminders
    while True:
        at = replace(acc, reminders=n).next_reminder_at()
        if at is None or at > now:
            break
        due, n = at, n + 1
    if due is not None and now < acc.overdue_since + GRACE:
        actions.append(Action("reminder", due, n))
    elif now >= acc.overdue_since + GRACE:
        n = acc.reminders  # a tick after the grace period sends none: the count says what was sent
    acc = replace(acc, reminders=n)
    if acc.downgrade_at is not None and now >= acc.downgrade_at:
        acc = replace(acc, state=DOWNGRADED, since=acc.downgrade_at)
        actions.append(Action("downgraded", acc.since))
    return acc, actions
