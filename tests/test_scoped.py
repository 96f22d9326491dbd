"""`tfdgmm.scoped.ScopedValues`: values live for their block, in their graph and nested ones."""

import tensorflow as tf

from tfdgmm.scoped import ScopedValues


def test_an_eager_scope_is_found_inside_its_block_only():
    values = ScopedValues()
    assert values.lookup("w") is None
    with values.scope({"w": tf.constant(1.0)}):
        assert float(values.lookup("w")) == 1.0
        with values.scope({"w": tf.constant(2.0)}):  # the innermost scope wins
            assert float(values.lookup("w")) == 2.0
        assert float(values.lookup("w")) == 1.0
    assert values.lookup("w") is None
    assert values.keys() == []


def test_a_graph_scope_reaches_nested_functions_but_not_other_graphs():
    values = ScopedValues()
    seen = {}

    @tf.function
    def other():
        seen["other"] = values.lookup("w")
        return tf.constant(0.0)

    @tf.function
    def outer():
        with values.scope({"w": tf.constant(3.0) * 1.0}):
            body = tf.function(lambda: values.lookup("w") + 0.0)
            out = body()  # a function nested in the graph that made the value
            with tf.init_scope():  # eager: the graph's tensor is out of reach
                seen["eager_inside_graph_scope"] = values.lookup("w")
            return out

    assert float(outer()) == 3.0
    assert seen["eager_inside_graph_scope"] is None
    with values.scope({"w": tf.constant(5.0)}):  # an eager value is not used while tracing
        other()
    assert seen["other"] is None
