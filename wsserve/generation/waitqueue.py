"""Waiting generations of one priority: FIFO within a group, round-robin between groups."""

from __future__ import annotations

from collections import deque
from typing import Any

from .sequence import Sequence

__all__ = ["WaitQueue"]


class WaitQueue:
    """Waiting sequences of one priority: FIFO within a group, round-robin between groups."""

    __slots__ = ("_groups", "_order", "n")

    def __init__(self) -> None:
        self._groups: dict[Any, deque[Sequence]] = {}
        self._order: deque[Any] = deque()  # groups with waiting sequences, next to serve first
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def push(self, seq: Sequence, *, front: bool = False) -> None:
        """Queue ``seq`` at the back of its group (``front``: at the front, group served next)."""
        key = seq.group if seq.group is not None else seq
        q = self._groups.get(key)
        if q is None:
            q = self._groups[key] = deque()
            if front:
                self._order.appendleft(key)
            else:
                self._order.append(key)
        if front:
            q.appendleft(seq)
        else:
            q.append(seq)
        self.n += 1

    def pop(self) -> Sequence:
        """The first sequence of the next group; that group moves to the back."""
        key = self._order.popleft()
        q = self._groups[key]
        seq = q.popleft()
        if q:
            self._order.append(key)
        else:
            del self._groups[key]
        self.n -= 1
        return seq

    def pop_group(self, key: Any) -> Sequence:
        """The first sequence of group ``key`` (which must be waiting)."""
        q = self._groups[key]
        seq = q.popleft()
        if not q:
            del self._groups[key]
            self._order.remove(key)
        self.n -= 1
        return seq

    def remove(self, seq: Sequence) -> None:
        key = seq.group if seq.group is not None else seq
        q = self._groups[key]
        q.remove(seq)
        if not q:
            del self._groups[key]
            self._order.remove(key)
        self.n -= 1

    def groups(self) -> list[Any]:
        return list(self._order)

    def __iter__(self) -> Any:
        for q in list(self._groups.values()):
            yield from list(q)
