"""Dependency graphs over step indices: cycle detection and the plan each mode implies."""

from __future__ import annotations

from collections.abc import Sequence


def find_cycle(deps: Sequence[Sequence[int]]) -> list[int] | None:
    """Return one cycle as a list of indices (in dependency order), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = [WHITE] * len(deps)
    for root in range(len(deps)):
        if colour[root] != WHITE:
            continue
        path: list[int] = []
        stack: list[tuple[int, int]] = [(root, 0)]
        while stack:
            node, pos = stack.pop()
            if pos == 0:
                colour[node] = GREY
                path.append(node)
            if pos < len(deps[node]):
                stack.append((node, pos + 1))
                nxt = deps[node][pos]
                if colour[nxt] == GREY:
                    return path[path.index(nxt) :]
                if colour[nxt] == WHITE:
                    stack.append((nxt, 0))
            else:
                colour[node] = BLACK
                path.pop()
    return None


def plan(mode: str, count: int, named_deps: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """The dependencies of each step: sequential chains them, parallel has none, dag as given."""
    if mode == "sequential":
        return tuple(((i - 1,) if i else ()) for i in range(count))
    if mode == "parallel":
        return tuple(() for _ in range(count))
    return tuple(tuple(d) for d in named_deps)


def dependents(deps: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """The reverse graph: for each step, the steps that wait for it."""
    reverse: list[list[int]] = [[] for _ in deps]
    for index, needs in enumerate(deps):
        for need in needs:
            reverse[need].append(index)
    return tuple(tuple(r) for r in reverse)
