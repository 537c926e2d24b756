"""--num_workers: the threads that read the dataset (decode media, read captions and cache headers) while the
encoders work, as musubi-tuner's caching scripts use a thread pool. Results come back in input order."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn over items by `workers` threads, at most `workers` ahead of the consumer, in input order; with one
    worker, in the caller's thread. An error in fn is raised where its result is due."""
    if workers <= 1:
        yield from map(fn, items)
        return
    logger.info("reading the dataset with %d worker threads", workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dataset") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the consumer stopped early or an item failed: drop the rest
                future.cancel()
