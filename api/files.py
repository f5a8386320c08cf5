"""Whether features' files overlap: globs declared in features.json ("files") and the paths
earlier attempts locked. Conservative: two globs overlap unless their literal prefixes diverge,
and ``*`` also matches ``/``, so features are kept apart when in doubt, never run into each other."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

_MAGIC = frozenset("*?[")


def _has_magic(pattern: str) -> bool:
    return any(c in _MAGIC for c in pattern)


def _normal(pattern: str) -> str:
    pattern = pattern.strip().replace("\\", "/").removeprefix("./")
    return pattern + "**" if pattern.endswith("/") else pattern  # a directory: everything under it


def _prefix(pattern: str) -> str:
    for i, c in enumerate(pattern):
        if c in _MAGIC:
            return pattern[:i]
    return pattern


def _matches(path: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(path, pattern):
        return True
    # "src/**" also names "src" itself, and "src/**/x" names "src/x".
    if pattern.endswith("/**") and path == pattern[:-3]:
        return True
    return "/**/" in pattern and fnmatch.fnmatchcase(path, pattern.replace("/**/", "/"))


def patterns_overlap(a: str, b: str) -> bool:
    a, b = _normal(a), _normal(b)
    magic_a, magic_b = _has_magic(a), _has_magic(b)
    if not magic_a and not magic_b:
        return a == b
    if not magic_a:
        return _matches(a, b)
    if not magic_b:
        return _matches(b, a)
    pa, pb = _prefix(a), _prefix(b)
    return pa.startswith(pb) or pb.startswith(pa)


def overlap(mine: Iterable[str], theirs: Iterable[str]) -> bool:
    """True when any of ``mine`` may name a file any of ``theirs`` names."""
    theirs = list(theirs)
    return any(patterns_overlap(a, b) for a in mine for b in theirs)
