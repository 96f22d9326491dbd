"""Small test helpers for bijectors (TFP's `bijector_test_util` is not shipped).

All helpers work on a bijector `b` with events of rank `event_ndims` and any
conditioning keywords (`**kwargs`, e.g. `choice=...`). They break TFP's
forward/inverse cache (which would otherwise return the cached input and make
round trips trivially exact) by passing fresh tensors.
"""

import numpy as np
import tensorflow as tf

__all__ = [
    "fresh",
    "round_trip_errors",
    "autodiff_log_det",
    "dense_matrix",
    "assert_log_det_matches_autodiff",
]


def fresh(x):
    """A new tensor with the value of `x` (defeats the bijector cache)."""
    return tf.identity(tf.convert_to_tensor(x)) + tf.zeros([], x.dtype)


def round_trip_errors(b, x, y=None, **kwargs):
    """Max abs errors of `inverse(forward(x)) - x` and `forward(inverse(y)) - y`.

    `y` defaults to `x` (for bijectors whose two sides have the same shape).
    """
    x = tf.convert_to_tensor(x)
    y = x if y is None else tf.convert_to_tensor(y)
    inv_f = b.inverse(fresh(b.forward(fresh(x), **kwargs)), **kwargs)
    f_inv = b.forward(fresh(b.inverse(fresh(y), **kwargs)), **kwargs)
    return (float(tf.reduce_max(tf.abs(inv_f - x))), float(tf.reduce_max(tf.abs(f_inv - y))))


def _flat_fn(fn, batch_shape, event_shape):
    n = int(np.prod(event_shape))

    def g(xf):
        y = fn(tf.reshape(xf, list(batch_shape) + list(event_shape)))
        return tf.reshape(y, [-1, n])

    return g


def autodiff_log_det(fn, x, event_ndims):
    """`log|det d fn(x) / dx|` per event, by `GradientTape.batch_jacobian`.

    `fn` maps `x [*batch, *event]` to the same shape with batch elements
    independent. Returns `[*batch]`.
    """
    x = tf.convert_to_tensor(x)
    batch_shape = x.shape[: x.shape.rank - event_ndims].as_list()
    event_shape = x.shape[x.shape.rank - event_ndims :].as_list()
    n = int(np.prod(event_shape))
    xf = tf.reshape(x, [-1, n])
    g = _flat_fn(fn, batch_shape, event_shape)
    with tf.GradientTape() as tape:
        tape.watch(xf)
        y = g(xf)
    jac = tape.batch_jacobian(y, xf)  # [B, n, n]
    _, logdet = tf.linalg.slogdet(jac)
    return tf.reshape(logdet, batch_shape)


def dense_matrix(fn, event_shape, dtype=tf.float64):
    """Matrix `A` and offset `c` with `flat(fn(x)) = A flat(x) + c` (affine fn).

    `fn` maps `[m, *event_shape]` to `[m, *event_shape]` (e.g. a bijector's
    `forward` with a fixed choice). Row-major flattening of the event.
    """
    n = int(np.prod(event_shape))
    basis = tf.reshape(tf.eye(n, dtype=dtype), [n] + list(event_shape))
    zero = tf.zeros([1] + list(event_shape), dtype)
    c = tf.reshape(fn(zero), [n])
    cols = tf.reshape(fn(basis), [n, n]) - c[None, :]  # row j = A e_j
    return tf.transpose(cols), c


def assert_log_det_matches_autodiff(b, x, event_ndims, rtol=1e-9, atol=1e-9, **kwargs):
    """Checks fldj(x) against autodiff and ildj(forward(x)) == -fldj(x)."""
    fldj = b.forward_log_det_jacobian(x, event_ndims=event_ndims, **kwargs)
    expected = autodiff_log_det(lambda v: b.forward(v, **kwargs), x, event_ndims)
    fldj = tf.broadcast_to(fldj, tf.shape(expected))
    np.testing.assert_allclose(
        fldj.numpy(), expected.numpy(), rtol=rtol, atol=atol, err_msg="fldj vs autodiff Jacobian"
    )
    y = fresh(b.forward(x, **kwargs))
    ildj = b.inverse_log_det_jacobian(y, event_ndims=event_ndims, **kwargs)
    ildj = tf.broadcast_to(ildj, tf.shape(expected))
    np.testing.assert_allclose(
        ildj.numpy(), -expected.numpy(), rtol=rtol, atol=atol, err_msg="ildj vs -autodiff Jacobian"
    )
    return expected
