"""Values computed once for a block of work and reused by every call inside it.

`ScopedValues` is a stack of caches, each entered with `scope(cache)`. A value is found by
`lookup(key)` only in the graph (or eager context) that entered its scope and in functions
nested in it (`tf.while_loop` bodies, inner `tf.function`s), never in an unrelated graph,
where its tensor would be out of reach. Used by `tfdgmm.bijectors.precomposed` (blocks
composed once per E-step) and `tfdgmm.path_search.gram_constants` (the exact Gram steps'
constants).
"""

import contextlib

import tensorflow as tf

__all__ = ["ScopedValues", "graph_reaches"]


def graph_reaches(graph) -> bool:
    """True when the current graph is `graph` or nested in it."""
    g = tf.compat.v1.get_default_graph()
    while g is not None:
        if g is graph:
            return True
        g = getattr(g, "outer_graph", None)
    return False


class ScopedValues:
    """A stack of `(graph or None, {key: value})` scopes; the innermost reachable value wins."""

    def __init__(self):
        self._stack = []

    @contextlib.contextmanager
    def scope(self, cache: dict):
        """Within the block, `lookup` finds the values of `cache` (in this graph or nested)."""
        graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
        self._stack.append((graph, cache))
        try:
            yield
        finally:
            self._stack.pop()

    def lookup(self, key):
        """The value of `key` from the innermost scope reachable from here, else None."""
        for graph, cache in reversed(self._stack):
            value = cache.get(key)
            if value is None:
                continue
            if graph is None and tf.executing_eagerly():
                return value
            if graph is not None and not tf.executing_eagerly() and graph_reaches(graph):
                return value
        return None

    def keys(self):
        """Every key of every scope (reachable or not)."""
        return [key for _, cache in self._stack for key in cache]
