"""``--topic-pattern``: which topic names a pattern subscription takes.

The pattern must match a topic's whole name, as Kafka's Java consumer does
(``Pattern.matcher(topic).matches()``): ``orders-.*`` takes ``orders-eu``, not
``old-orders-eu``. Two kinds of topics are never taken, whatever the pattern says: Kafka's
internal topics and every name starting with ``__`` (``__consumer_offsets``,
``__transaction_state``, and the like), and the changelog topics of the daemon's own group
(``<group>.<topic>.changelog``, written by ``--changelog``), which would otherwise feed the
state its own changes.

aiokafka matches a pattern subscription with ``pattern.match(topic)``, which anchors only at the
start, so the pattern given to it spells all of this out: the two exclusions as lookaheads, the
user's pattern in a group, and an end anchor. Inline flags at the very start of the user's
pattern (``(?i)orders``) are moved to the front of the whole, where Python requires them.
"""

from __future__ import annotations

import re

from sqlstate.errors import ConfigError

# The suffix of a changelog topic's name (``changelog/topics.py`` names them; the changelog
# layer sits above this one).
CHANGELOG_SUFFIX = ".changelog"
# Inline global flags at the start of a pattern, such as ``(?i)`` or ``(?ix)``.
_LEADING_FLAGS = re.compile(r"^(?:\(\?[aiLmsux]+\))+")


def subscription_pattern(pattern: str, group_id: str) -> re.Pattern[str]:
    """The pattern aiokafka subscribes with: ``pattern`` matching whole names, internal topics
    and the group's changelog topics left out. ``ConfigError`` when it does not compile."""
    flags = _LEADING_FLAGS.match(pattern)
    leading = flags.group(0) if flags else ""
    body = pattern[len(leading) :]
    # A verbose pattern may end in a comment, which would swallow the closing parenthesis.
    end = "\n" if "x" in leading else ""
    whole = (
        f"{leading}(?!__)(?!{re.escape(group_id)}\\..*{re.escape(CHANGELOG_SUFFIX)}\\Z)"
        f"(?:{body}{end})\\Z"
    )
    try:
        return re.compile(whole)
    except re.error as error:
        raise ConfigError(
            f"--topic-pattern {pattern!r} is not a valid regular expression: {error}"
        ) from error


def matches(subscription: re.Pattern[str], topic: str) -> bool:
    """Whether ``topic`` is one the subscription takes (as aiokafka asks it)."""
    return subscription.match(topic) is not None
