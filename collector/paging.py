"""Keyset paging of the read API's long lists: `?limit=N&after=KEY`, answered with `next_after`."""

from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Query

T = TypeVar("T")

# A page holds at most this many items: 5,000 instances of a month's days are ~1.5 MB of JSON.
MAX_LIMIT = 5_000

# Without `limit` a route answers its whole list, as it did before paging existed: integrations
# written then keep working. A key, not an offset: a page boundary stays put while items are added
# (a new agent, an instance first seen), so walking the pages neither skips nor repeats one.
Limit = Annotated[
    int | None,
    Query(ge=1, le=MAX_LIMIT, description=f"at most this many items (1-{MAX_LIMIT}); all when left out"),
]
After = Annotated[
    str | None,
    Query(max_length=256, description="only items whose key sorts after this one: the previous "
          "answer's `next_after`"),
]


def page(
    items: Sequence[T], key: Callable[[T], Any], limit: int | None, after: str | None
) -> tuple[list[T], str | None]:
    """The items (sorted by ``key``, keys unique) after ``after``, at most ``limit`` of them, and
    the key to pass as ``after`` for the next page: None when nothing follows this page."""
    start = 0 if after is None else bisect_right(items, after, key=key)
    rest = items[start:]
    if limit is None or len(rest) <= limit:
        return list(rest), None
    return list(rest[:limit]), key(rest[limit - 1])
