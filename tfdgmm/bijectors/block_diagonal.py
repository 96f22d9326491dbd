"""`BlockDiagonal`: an invertible `d x d` affine map at every patch location."""

import tensorflow as tf
from tensorflow_probability.python.internal import dtype_util, tensor_util

from tfdgmm.bijectors import _bank, registry
from tfdgmm.bijectors._bank import SELECTIONS
from tfdgmm.bijectors.base import BankBijector

__all__ = ["BlockDiagonal"]


@registry.register
class BlockDiagonal(BankBijector):
    r"""Block-diagonal linear layer on a patch tensor, with `K` alternatives.

    Acts on a patch tensor event `[Hp, Wp, d]` (see `Patchify`): the `d`-vector at
    every location is transformed by its own small matrix, i.e. the whole map is
    a block-diagonal `(Hp Wp d) x (Hp Wp d)` matrix (van den Oord & Dambre, 2015,
    Sec. 2.1). Parameterised on the *density* side (`inverse`):

    ```none
    inverse:  z[h, w] = W_k[h, w] (x[h, w] - shift_k[h, w]),   W = P L U
    forward:  x[h, w] = W_k[h, w]^{-1} z[h, w] + shift_k[h, w]
    ildj   =  sum_{h, w} sum_i lower_upper_k[h, w, i, i]   (= log|det W|)
    ```

    `L` is unit lower triangular (strict lower part of `lower_upper`), `U` is
    upper triangular with diagonal `exp(diag(lower_upper))` (so `W` is always
    invertible) and `P` is a fixed permutation, `(P v)_i = v[perm[i]]`.
    Parameters without the `(Hp, Wp)` axes are shared by all locations.

    The alternative `k` is given by the `choice` keyword of `forward`,
    `inverse` and the log-det methods:

    * `choice=None`: a batch of `K` bijectors (`batch_shape == [K]`), so
      `tfd.TransformedDistribution` and `tfd.MixtureSameFamily` work directly.
    * `selection='sample'` (shared blocks): `choice` has the input's batch
      shape, one alternative per sample.
    * `selection='location'` (unshared blocks): `choice` has shape
      `batch + [Hp, Wp]`, one alternative per sample and location.

    `inverse` (the hot path of EM) composes `W` once per call (batch
    independent, XLA-compiled) and does one GEMM per location and alternative
    over all its samples; `forward` (sampling) goes through the LU factors:
    explicit inverses `U^{-1} L^{-1} P^T` (two triangular solves per block)
    then GEMMs, or, for per-location blocks and fewer than `d` samples per
    alternative, triangular solves on the data (no `K * Hp * Wp` inversions).

    #### Examples

    ```python
    import tensorflow as tf
    import tensorflow_probability as tfp
    from tfdgmm.bijectors import BlockDiagonal
    tfd = tfp.distributions

    bd = BlockDiagonal.new(block_size=12, num_alternatives=3,
                           spatial_shape=(2, 2), selection='sample', seed=0)
    x = tf.random.normal([5, 2, 2, 12])
    z = bd.inverse(x, choice=[0, 2, 1, 1, 0])          # [5, 2, 2, 12]
    ildj = bd.inverse_log_det_jacobian(x, choice=[0, 2, 1, 1, 0])  # [5]

    # A mixture of K Gaussians over patch tensors, directly:
    base = tfd.Independent(tfd.Normal(tf.zeros([2, 2, 12]), 1.), 3)
    components = tfd.TransformedDistribution(base, bd)   # batch_shape [3]
    mix = tfd.MixtureSameFamily(tfd.Categorical(logits=tf.zeros(3)), components)
    mix.log_prob(x)                                       # [5]
    ```

    #### References

    [1]: Aaron van den Oord and Joni Dambre. Locally-connected transformations
         for deep GMMs. ICML Deep Learning Workshop, 2015.
    [2]: Diederik P. Kingma and Prafulla Dhariwal. Glow: Generative flow with
         invertible 1x1 convolutions. NeurIPS, 2018. https://arxiv.org/abs/1807.03039
    """

    TYPE = "block_diagonal"
    CONFIG_KEYS = ("alternatives", "selection", "per_location")

    @classmethod
    def normalize_spec(cls, spec, previous):
        """Defaults: 1 alternative, `'sample'` selection, `per_location` True for `'sample'`
        (the paper's shared blocks) and False for `'location'` (unshared blocks)."""
        del previous
        selection = spec.get("selection", "sample")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be 'sample' or 'location'; got {selection!r}")
        per_location = bool(spec.get("per_location", selection == "sample"))
        return {
            "alternatives": int(spec.get("alternatives", 1)),
            "selection": selection,
            "per_location": per_location,
        }

    @classmethod
    def from_spec(cls, spec, patch_shape, seed, dtype, name):
        """A new bank for a normalised spec (see `BankBijector.from_spec`)."""
        hp, wp, d = patch_shape
        return cls.new(
            d,
            spatial_shape=(hp, wp) if spec["per_location"] else None,
            selection=spec["selection"],
            num_alternatives=spec["alternatives"],
            seed=seed,
            dtype=dtype,
            name=name,
        )

    def __init__(
        self,
        lower_upper,
        permutation,
        shift=None,
        selection="sample",
        validate_args=False,
        name="block_diagonal",
    ):
        """Creates the bijector from LU parameters.

        Args:
          lower_upper: float `[K, d, d]` or `[K, Hp, Wp, d, d]` (per location).
            Strict lower part: `L`; diagonal: `log diag(U)`; strict upper: `U`.
          permutation: int32 `[K, d]` or `[K, Hp, Wp, d]` (matching), `(P v)_i =
            v[perm[i]]`. Usually a non-trainable `tf.Variable`.
          shift: optional float, `lower_upper.shape[:-1]`. Default: zero.
          selection: 'sample' or 'location' (how `choice` selects alternatives).
          validate_args: Python `bool`; check parameters, inputs and `choice`.
          name: Python `str` name.
        """
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            dtype = dtype_util.common_dtype([lower_upper, shift], dtype_hint=tf.float32)
            self._lower_upper = tensor_util.convert_nonref_to_tensor(
                lower_upper, dtype=dtype, name="lower_upper"
            )
            self._permutation = tensor_util.convert_nonref_to_tensor(
                permutation, dtype_hint=tf.int32, name="permutation"
            )
            self._shift = (
                None
                if shift is None
                else tensor_util.convert_nonref_to_tensor(shift, dtype=dtype, name="shift")
            )
            self._selection = _bank.check_selection(selection)
            lu_shape = self._lower_upper.shape
            if lu_shape.rank not in (3, 5) or not lu_shape.is_fully_defined():
                raise ValueError(
                    f"{name}: `lower_upper` must have static shape [K, d, d] or "
                    f"[K, Hp, Wp, d, d], got {lu_shape}."
                )
            if lu_shape[-1] != lu_shape[-2]:
                raise ValueError(f"{name}: `lower_upper` blocks must be square, got {lu_shape}.")
            if self._permutation.shape != lu_shape[:-1]:
                raise ValueError(
                    f"{name}: `permutation` must have shape {lu_shape[:-1]} "
                    f"(= lower_upper.shape[:-1]), got {self._permutation.shape}."
                )
            if self._shift is not None and self._shift.shape != lu_shape[:-1]:
                raise ValueError(
                    f"{name}: `shift` must have shape {lu_shape[:-1]} "
                    f"(= lower_upper.shape[:-1]), got {self._shift.shape}."
                )
            self._num_alternatives = int(lu_shape[0])
            self._block_size = int(lu_shape[-1])
            self._spatial_shape = tuple(lu_shape[1:3].as_list()) if lu_shape.rank == 5 else None
            super().__init__(
                forward_min_event_ndims=3,
                is_constant_jacobian=True,
                validate_args=validate_args,
                parameters=parameters,
                dtype=dtype,
                name=name,
            )

    @classmethod
    def new(
        cls,
        block_size,
        num_alternatives=1,
        spatial_shape=None,
        selection="sample",
        seed=None,
        dtype=tf.float32,
        validate_args=False,
        name="block_diagonal",
    ):
        """Creates trainable `tf.Variable`s initialised to random rotations.

        Every alternative (and location) starts as a different Haar-random
        orthogonal matrix (condition number 1), shift 0.

        Args:
          block_size: `d`, the patch-tensor depth (`r * r * C`).
          num_alternatives: `K`.
          spatial_shape: `None` (one block for all locations) or `(Hp, Wp)` (one
            block per location).
          selection: 'sample' or 'location'.
          seed: int or None, for numpy's generator.
          dtype: float dtype of the variables.
          validate_args: as in the constructor.
          name: as in the constructor.
        """
        d = int(block_size)
        lead = (int(num_alternatives),) + (
            tuple(int(s) for s in spatial_shape) if spatial_shape is not None else ()
        )
        lower_upper, perm = _bank.random_orthogonal_lu(lead, d, seed)
        return cls(
            lower_upper=tf.Variable(
                lower_upper.astype(tf.as_dtype(dtype).as_numpy_dtype), name="lower_upper"
            ),
            permutation=tf.Variable(perm, trainable=False, name="permutation"),
            shift=tf.Variable(tf.zeros(lead + (d,), dtype), name="shift"),
            selection=selection,
            validate_args=validate_args,
            name=name,
        )

    @classmethod
    def _parameter_properties(cls, dtype):
        rank = lambda extra: _bank.param_event_ndims(  # noqa: E731
            lambda self: extra + (2 if self._spatial_shape else 0), 3
        )
        return dict(
            lower_upper=_bank.properties(rank(2)),
            permutation=_bank.properties(rank(1), integer=True),
            shift=_bank.properties(rank(1)),
        )

    # -- public properties ------------------------------------------------------

    @property
    def lower_upper(self):
        return self._lower_upper

    @property
    def permutation(self):
        return self._permutation

    @property
    def shift(self):
        return self._shift

    @property
    def block_size(self):
        return self._block_size

    @property
    def spatial_shape(self):
        """`(Hp, Wp)` if parameters are per location, else `None`."""
        return self._spatial_shape

    def matrix(self):
        """The density-side matrices `W = P L U`, `[K, (Hp, Wp,) d, d]`."""
        return _bank.lu_matrix(
            tf.convert_to_tensor(self._lower_upper), tf.convert_to_tensor(self._permutation)
        )

    def inverse_log_det_table(self, event_shape=None):
        """Per-alternative, per-location ildj terms `[K, Hp, Wp]`.

        `table[k, h, w] = log|det W_k[h, w]|`; `event_shape` (`[Hp, Wp, d]`) is
        needed only when the parameters are shared by all locations.
        """
        ld = _bank.lu_log_det(tf.convert_to_tensor(self._lower_upper))
        if self._spatial_shape is not None:
            return ld
        hp, wp = self._default_event_spatial(event_shape)
        return tf.broadcast_to(ld[:, None, None], [self._num_alternatives, hp, wp])

    # -- implementation ---------------------------------------------------------

    def _check_input(self, x, what):
        d = self._block_size
        sp = self._spatial_shape or (None, None)
        _bank.check_event(x, 3, [sp[0], sp[1], d], self.name, what)
        return _bank.maybe_assert_finite(x, self.validate_args, self.name, what)

    def _lg_params(self, *tensors):
        """Reshapes `[K, (Hp, Wp,) ...]` parameters to `[K, Lg, ...]`."""
        k = self._num_alternatives
        out = []
        for t in tensors:
            if t is None:
                out.append(None)
                continue
            tail = t.shape[(3 if self._spatial_shape else 1) :].as_list()
            out.append(tf.reshape(t, [k, -1] + tail))
        return out

    def _density_params(self):
        """`(W^T, -W shift)` as `[K, Lg, d, d]`, `[K, Lg, d]` (the inverse's GEMM operands)."""
        shift = None if self._shift is None else tf.convert_to_tensor(self._shift)
        mats_t, bias = _bank.lu_density_params(
            tf.convert_to_tensor(self._lower_upper), tf.convert_to_tensor(self._permutation), shift
        )
        return tuple(self._lg_params(mats_t, bias))

    def _precompose(self):
        """Batch-independent work of `inverse`, for `_bank.precomposed` (e.g. per E-step)."""
        return {"density": self._density_params()}

    def _inverse(self, y, choice=None):
        y = self._check_input(y, "input to inverse")
        choice = self._choice(choice, y)
        mats_t, bias = _bank.cached(self, "density", self._density_params)
        return _bank.bank_linear(
            y, _bank.MatmulOp(mats_t), bias, choice, self._selection, self.name
        )

    def _forward(self, x, choice=None):
        x = self._check_input(x, "input to forward")
        choice = self._choice(choice, x)
        lu = tf.convert_to_tensor(self._lower_upper)
        perm = tf.convert_to_tensor(self._permutation)
        shift = None if self._shift is None else tf.convert_to_tensor(self._shift)

        def by_inverses():
            inv_t, sh = self._lg_params(_bank.lu_inverse_params(lu, perm), shift)
            return _bank.bank_linear(
                x, _bank.MatmulOp(inv_t), sh, choice, self._selection, self.name
            )

        def by_solves():
            lower, upper, inv_perm, sh = self._lg_params(*_bank.lu_sampling_params(lu, perm), shift)
            return _bank.bank_linear(
                x, _bank.LUSolveOp(lower, upper, inv_perm), sh, choice, self._selection, self.name
            )

        if self._spatial_shape is None:
            return by_inverses()  # K blocks only: their inverses are cheap.
        # K * Hp * Wp blocks: inverting them all costs as much as solving for
        # d right-hand sides per block; solving on the data costs one solve per
        # sample. Measured crossover (bench/bijectors.py machine): ~d samples
        # per alternative; batched GEMMs beat batched solves above it.
        n = tf.size(x) // (self._block_size * tf.shape(x)[-2] * tf.shape(x)[-3])
        per_alt = (
            n // self._num_alternatives if choice is not None and self._selection == "sample" else n
        )
        static = tf.get_static_value(per_alt)
        if static is not None:
            return by_inverses() if static >= self._block_size else by_solves()
        return tf.cond(per_alt >= self._block_size, by_inverses, by_solves)

    def _ildj(self, x, choice):
        _bank.check_event(x, 3, [None, None, self._block_size], self.name)
        choice = self._choice(choice, x)
        table = self.inverse_log_det_table(_bank.shape_list(x)[-3:])
        return _bank.reduce_table(table, choice, self._selection, x)

    def _inverse_log_det_jacobian(self, y, choice=None):
        return self._ildj(y, choice)

    def _forward_log_det_jacobian(self, x, choice=None):
        return -self._ildj(x, choice)

    def _parameter_control_dependencies(self, is_init):
        if not self.validate_args:
            return []
        assertions = []
        if is_init != tensor_util.is_ref(self._lower_upper):
            assertions.append(
                tf.debugging.assert_all_finite(
                    self._lower_upper, message=f"{self.name}: `lower_upper` contains NaN or Inf."
                )
            )
        if is_init != tensor_util.is_ref(self._permutation):
            perm = tf.convert_to_tensor(self._permutation)
            assertions.append(
                tf.debugging.assert_equal(
                    tf.sort(perm, axis=-1),
                    tf.broadcast_to(tf.range(self._block_size, dtype=perm.dtype), tf.shape(perm)),
                    message=f"{self.name}: `permutation` is not a permutation of "
                    f"range({self._block_size}).",
                )
            )
        return assertions
