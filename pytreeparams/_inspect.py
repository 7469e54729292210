"""``inspect``: loss, gradients and per-layer statistics of both in one jitted call."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._grads import GRAD_STAT_NAMES, GradStats, grad_stats
from ._summary import summary
from ._typing import PyTree

__all__ = ['Inspection', 'inspect']


@dataclasses.dataclass(frozen=True)
class Inspection:
    """The result of :func:`inspect`.

    Attributes:
      loss: The loss value.
      grads: The gradient tree.
      aux: The auxiliary output (with ``has_aux``), else None.
      stats: The :class:`GradStats` of the gradients against the parameters.
      table: A ``ptp.Summary`` of the parameters with gradient columns beside.
      jitted: Whether the computation ran under ``jax.jit``.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> r = ptp.inspect(lambda p: jnp.sum(p['w'] ** 2), {'w': jnp.ones(2)})
      >>> float(r.loss), r.jitted
      (2.0, True)
    """

    loss: jax.Array
    grads: PyTree
    aux: Any
    stats: GradStats
    table: Any
    jitted: bool

    def __str__(self) -> str:
        return f'loss {float(self.loss):.6g}\n{self.table}'

    def _repr_html_(self) -> str:
        return f'<p>loss {float(self.loss):.6g}</p>' + self.table._repr_html_()

    def __rich__(self) -> Any:
        return self.table.__rich__()


_TRACE_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerArrayConversionError,
)


def _inspect_compute(
    params: PyTree, *args: Any, loss_fn: Callable[..., Any], has_aux: bool, depth: Any
) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    inexact = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves]
    if not any(inexact):
        raise TypeError(
            'inspect: params has no floating-point leaves to differentiate '
            f'(leaf dtypes: {sorted({str(jnp.result_type(x)) for x in leaves})})'
        )

    def with_floats(floats: list[Any]) -> PyTree:
        it = iter(floats)
        return jax.tree_util.tree_unflatten(
            treedef, [next(it) if d else x for x, d in zip(leaves, inexact)]
        )

    floats = [x for x, d in zip(leaves, inexact) if d]
    out, gf = jax.value_and_grad(lambda f, *a: loss_fn(with_floats(f), *a), has_aux=has_aux)(
        floats, *args
    )
    loss, aux = out if has_aux else (out, None)
    # leaves that are not floating point (a step counter, a PRNG key) get no
    # gradient: None, as in equinox.filter_grad, and no row in the statistics
    it = iter(gf)
    g = jax.tree_util.tree_unflatten(treedef, [next(it) if d else None for d in inexact])
    float_params = jax.tree_util.tree_unflatten(
        treedef, [x if d else None for x, d in zip(leaves, inexact)]
    )
    return loss, aux, g, grad_stats(g, float_params, depth=depth)


# One jitted function for every call: jax's cache keys it by loss_fn (static), so
# repeated inspect calls with the same loss function compile once.
_inspect_jit = jax.jit(_inspect_compute, static_argnames=('loss_fn', 'has_aux', 'depth'))


def inspect(
    loss_fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    has_aux: bool = False,
    jit: bool | None = None,
    depth: int | None = None,
) -> Inspection:
    """Loss, gradients and per-layer statistics of both, in one jitted call.

    Args:
      loss_fn: ``loss_fn(params, *args)`` returning a scalar (or ``(loss, aux)``
        with ``has_aux``).
      params: The parameters to differentiate. Leaves that are not floating
        point (an integer step counter, a PRNG key) are passed through but
        not differentiated: their gradient is None and they get no row.
      *args: Further arguments of ``loss_fn`` (a batch, ...).
      has_aux: Whether ``loss_fn`` returns ``(loss, aux)``.
      jit: None: try ``jax.jit`` and fall back to eager evaluation with a
        warning when ``loss_fn`` cannot be traced (Python control flow on
        values); True: require ``jit`` and raise a clear error instead;
        False: run eagerly.
      depth: Optional grouping depth for the statistics table.

    Returns:
      An :class:`Inspection`; print it for the table.

    Raises:
      ValueError: If ``jit=True`` and ``loss_fn`` cannot be traced.
      TypeError: If ``params`` has no floating-point leaf.

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> r = ptp.inspect(lambda p, x: jnp.sum(p['w'] * x), {'w': jnp.ones(3)}, jnp.arange(3.0))
      >>> float(r.loss), r.grads['w'].tolist(), round(float(r.stats['grad_norm'][0]), 6)
      (3.0, [0.0, 1.0, 2.0], 2.236068)
    """

    def compute(p: PyTree, *a: Any) -> Any:
        return _inspect_compute(p, *a, loss_fn=loss_fn, has_aux=has_aux, depth=depth)

    jitted = jit is not False
    if jitted:
        try:
            loss, aux, grads, gs = _inspect_jit(
                params, *args, loss_fn=loss_fn, has_aux=has_aux, depth=depth
            )
        except _TRACE_ERRORS as e:
            if jit:
                raise ValueError(
                    'inspect(jit=True): loss_fn cannot be traced by jax.jit (it uses Python '
                    'control flow on array values, e.g. `if x.sum() > 0` or `while ...`). '
                    'Rewrite it with jax.lax.cond/while_loop, or pass jit=None to fall back '
                    f'to eager evaluation. JAX said: {type(e).__name__}'
                ) from e
            warnings.warn(
                'inspect: loss_fn cannot be traced by jax.jit (Python control flow on '
                'values); evaluating eagerly instead. Pass jit=False to silence this.',
                stacklevel=2,
            )
            jitted = False
    if not jitted:
        loss, aux, grads, gs = compute(params, *args)
    base = summary(params, stats=True, depth=depth)
    table = np.asarray(jax.device_get(gs.table))
    body = base.groups if depth is not None else base.rows
    index = {p: i for i, p in enumerate(gs.paths)}
    cols = ('grad_norm', 'grad_rms', 'grad_max', 'grad_nonfinite', 'grad_to_param')
    new_rows = []
    for r in body:
        i = index.get(r.path)
        extra = tuple(
            (c, float(table[i, GRAD_STAT_NAMES.index(c)]) if i is not None else float('nan'))
            for c in cols
        )
        new_rows.append(dataclasses.replace(r, extra=extra))
    gn = float(gs.global_norm)
    totals = dataclasses.replace(
        base.totals, extra=(('grad_norm', gn),) + tuple((c, None) for c in cols[1:])
    )
    if depth is not None:
        base = dataclasses.replace(base, groups=tuple(new_rows), totals=totals)
    else:
        base = dataclasses.replace(base, rows=tuple(new_rows), totals=totals)
    return Inspection(loss, grads, aux, gs, base, jitted)
