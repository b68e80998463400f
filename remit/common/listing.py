"""A repeated condition in one line: the count, then the first few items.

- `first_few(items)`: ``"a; b; c ... (93 in all)"``, for a message that would otherwise print one line
  per unit, shard or file.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Items a one-line listing shows before it gives the count.
SHOWN = 5


def first_few(items: Sequence[str], shown: int = SHOWN, sep: str = "; ") -> str:
    """The first `shown` items joined by `sep`, and how many there are in all when some are left out."""
    head = sep.join(items[:shown])
    return head + (f" ... ({len(items)} in all)" if len(items) > shown else "")


__all__ = ["SHOWN", "first_few"]
