"""Statistics over training: ``History``, its arrays and its plots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import PathError, StructureError
from ._grads import GRAD_STAT_NAMES
from ._messages import did_you_mean, quote_list
from ._patterns import compile_pattern
from ._stats import STAT_NAMES, Stats
from ._typing import Pattern

__all__ = ['History']


class History:
    """Statistics of many steps, kept on device and fetched in bulk.

    ``append`` stores the (device) statistics without a host sync; the first
    read (``steps``, ``array``, ``plot``) fetches everything at once.

    Attributes:
      paths: The layer paths of the recorded statistics (None before any).
      columns: The statistic names (``GRAD_STAT_NAMES`` or ``STAT_NAMES``).

    Example:
      >>> import jax.numpy as jnp, pytreeparams as ptp
      >>> h = ptp.History()
      >>> for step in range(3):
      ...   h.append(step, ptp.grad_stats({'w': jnp.full(4, step + 1.0)}))
      >>> h.array('w', 'grad_norm').tolist()
      [2.0, 4.0, 6.0]
    """

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._pending: list[Any] = []
        self._tables: list[np.ndarray] = []
        self._global: list[float] = []
        self.paths: tuple[str, ...] | None = None
        self.columns: tuple[str, ...] = GRAD_STAT_NAMES

    def append(self, step: int, stats: Any) -> None:
        """Records ``stats`` (a :class:`GradStats` or ``ptp.Stats``) for ``step``.

        Raises:
          StructureError: If the paths differ from earlier steps.
        """

        columns = STAT_NAMES if isinstance(stats, Stats) else GRAD_STAT_NAMES
        if self.paths is None:
            self.paths, self.columns = stats.paths, columns
        elif stats.paths != self.paths or columns != self.columns:
            raise StructureError('History.append: statistics of another tree or kind than before')
        self._steps.append(int(step))
        gn = getattr(stats, 'global_norm', jnp.array(jnp.nan))
        self._pending.append((stats.table, gn))

    def _fetch(self) -> None:
        if self._pending:
            fetched = jax.device_get(self._pending)
            self._tables += [np.asarray(t) for t, _ in fetched]
            self._global += [float(g) for _, g in fetched]
            self._pending = []

    def __len__(self) -> int:
        return len(self._steps)

    @property
    def steps(self) -> np.ndarray:
        """The recorded step numbers."""
        return np.asarray(self._steps)

    def array(self, path: str, stat: str) -> np.ndarray:
        """The values of ``stat`` at ``path`` over the recorded steps.

        Raises:
          PathError: For an unknown path (naming the recorded ones).
          KeyError: For an unknown statistic (naming the recorded ones).
        """
        self._fetch()
        if self.paths is None or path not in self.paths:
            raise PathError(
                f'History has no path {path!r}; it has {quote_list(self.paths or ()) or "none"}.'
                + did_you_mean(path, self.paths or ())
            )
        if stat not in self.columns:
            raise KeyError(
                f'History has no statistic {stat!r}; it has {quote_list(self.columns)}.'
                + did_you_mean(stat, self.columns)
            )
        i, j = self.paths.index(path), self.columns.index(stat)
        return np.array([t[i, j] for t in self._tables])

    def global_norm(self) -> np.ndarray:
        """The global gradient norm over the recorded steps."""
        self._fetch()
        return np.asarray(self._global)

    def as_dict(self) -> dict[str, np.ndarray]:
        """``{'path/stat': values over steps}`` for every path and statistic, and
        ``'global_norm'`` (gradient statistics) over the steps."""
        self._fetch()
        stacked = np.stack(self._tables) if self._tables else np.zeros((0, 0, 0))
        out = {
            f'{p}/{s}': stacked[:, i, j]
            for i, p in enumerate(self.paths or ())
            for j, s in enumerate(self.columns)
        }
        if self.columns == GRAD_STAT_NAMES:
            out['global_norm'] = self.global_norm()
        return out

    def plot(
        self,
        file: str | None = None,
        stats: Sequence[str] = ('grad_norm', 'param_norm', 'update_to_param'),
        paths: Pattern | None = None,
    ) -> Any:
        """Plots per-layer curves of ``stats`` against the step (log scale).

        Args:
          file: Where to save a PNG (or any format matplotlib knows), if given.
          stats: One panel per statistic; panels whose values are all NaN
            (e.g. updates not given) are left out.
          paths: Optional pattern for the layers to draw.

        Returns:
          The matplotlib ``Figure``.

        Raises:
          ImportError: Without matplotlib (``pip install pytreeparams[plot]``).
        """
        try:  # a Figure of its own: the global backend (a notebook's inline one) is left alone
            from matplotlib.figure import Figure
        except ImportError as e:  # pragma: no cover
            raise ImportError(
                'History.plot needs matplotlib: pip install pytreeparams[plot]'
            ) from e
        self._fetch()
        chosen = list(self.paths or ())
        if paths is not None:
            pred = compile_pattern(paths)
            chosen = [p for p in chosen if pred(p)]
        panels = [
            s for s in stats if any(np.isfinite(self.array(p, s)).any() for p in chosen)
        ] or list(stats[:1])
        fig = Figure(figsize=(8, 3 * len(panels)))
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)
        for ax, stat in zip(axes[:, 0], panels):
            for p in chosen:
                ax.plot(self.steps, self.array(p, stat), label=p)
            ax.set_yscale('log')
            ax.set_ylabel(stat)
            ax.grid(True, alpha=0.3)
        axes[0, 0].legend(fontsize='small', loc='best')
        axes[-1, 0].set_xlabel('step')
        fig.tight_layout()
        if file is not None:
            fig.savefig(file, dpi=100)
        return fig
