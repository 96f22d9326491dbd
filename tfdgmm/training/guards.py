"""`DivergenceGuard`: the M-step's divergence and NaN guard (when to roll back).

The M-step (`tfdgmm.training.em.EMTrainer`) runs its updates in chunks that never cross the end
of a window of `window` updates. After every chunk the guard is told the chunk's summed loss,
and whether the loss and the parameters stayed finite; at the end of every window it compares

* the window's mean loss with the best window mean so far in this M-step, starting from the
  loss the M-step started from (minus the E-step's training lower bound), and
* every `anchor_every` updates and at the end, the loss of a fixed probe minibatch with the
  best probe loss so far.

A NaN, an Inf, or a mean more than `divergence_nats` above its baseline is a *problem*: the
trainer then restores its last rollback target (`checkpoints/anchor/`, written at anchor
boundaries once the guard has passed them) and lowers the learning rate. Every decision is
taken at multiples of `window` updates, never by the clock, and the guard's running values
(`state`, a JSON-serialisable dict) are checkpointed with the trainer, so the same seed takes
the same decisions on any machine, resumed or not. With `divergence_nats <= 0` only NaN and Inf
are problems.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["DivergenceGuard"]


class DivergenceGuard:
    """Decides when an M-step diverges (see the module docstring).

    Args:
      divergence_nats: how far (nats per image) a window mean or a probe loss may rise above
        its baseline; `<= 0` turns the divergence checks off (NaN and Inf still count).
      start_loss: the loss the M-step starts from (`inf` when unknown).
      probe: callable returning the probe minibatch's current mean loss (a float); called only
        when the checks are on.
      window: updates per check.
      anchor_every: updates between rollback targets (rounded to a multiple of `window`).
      state: the running values from a checkpoint (`guard.state`), or None for a fresh start.
    """

    def __init__(
        self,
        divergence_nats: float,
        start_loss: float,
        probe: Callable[[], float],
        window: int = 10,
        anchor_every: int = 100,
        state: dict | None = None,
    ) -> None:
        self.divergence_nats = float(divergence_nats)
        self.check = self.divergence_nats > 0
        self.start_loss = start_loss
        self.window = max(1, int(window))
        self.every = max(1, int(anchor_every) // self.window) * self.window
        self._probe = probe
        self.state = dict(state) if state is not None else self._fresh()

    def _fresh(self) -> dict:
        return {
            "sum": 0.0,
            "done": 0,
            "best": self.start_loss,
            "best_probe": self._probe() if self.check else float("inf"),
            "last_window_loss": None,
        }

    def reset(self) -> None:
        """Start over (after a rollback): baselines from the start loss and a new probe."""
        self.state = self._fresh()

    @property
    def last_window_loss(self) -> float | None:
        """The mean loss of the last window that passed (None before the first)."""
        return self.state["last_window_loss"]

    def chunk_size(self, update: int, wanted: int) -> int:
        """`wanted` updates, cut at the end of the current window."""
        return min(wanted, self.window - update % self.window)

    def is_boundary(self, update: int, total: int) -> bool:
        """Whether `update` ends a window (or the M-step)."""
        return update % self.window == 0 or update >= total

    def is_anchor(self, update: int) -> bool:
        """Whether a passed check at `update` makes the state a rollback target."""
        return update % self.every == 0

    def add_chunk(
        self, loss_sum: float, done: int, loss_finite: bool, parameters_finite: Callable[[], bool]
    ) -> str | None:
        """Count a chunk of `done` updates whose losses sum to `loss_sum`.

        Returns:
          A problem (`'non-finite loss'`, `'non-finite parameters'`) or None.
          `parameters_finite` is called only when the loss was finite.
        """
        self.state["sum"] += loss_sum
        self.state["done"] += done
        if not loss_finite:
            return "non-finite loss"
        if not parameters_finite():
            return "non-finite parameters"
        return None

    def end_window(self, update: int, total: int) -> str | None:
        """The checks at the end of a window (`update` is the update count now).

        Returns:
          A problem (a diverging window mean or probe loss, with the numbers) or None; when
          None the window's mean becomes `last_window_loss` and the next window starts.
        """
        g = self.state
        if not g["done"]:
            return None
        mean = g["sum"] / g["done"]
        problem = None
        if self.check and mean > g["best"] + self.divergence_nats:
            problem = (
                f"diverging loss ({mean:.4g} nats/image over updates "
                f"{update - g['done']}-{update} against {g['best']:.4g} earlier "
                f"in this M-step"
                f"{' (its start)' if g['best'] == self.start_loss else ''})"
            )
        elif self.check and (update % self.every == 0 or update >= total):
            probe = self._probe()
            if probe <= g["best_probe"] + self.divergence_nats:  # (False for NaN)
                g["best_probe"] = min(g["best_probe"], probe)
            else:
                problem = (
                    f"diverging loss (a fixed probe minibatch: {probe:.4g} "
                    f"nats/image against {g['best_probe']:.4g} earlier in "
                    "this M-step)"
                )
        if problem is None:
            g["last_window_loss"] = mean
            g["best"] = min(g["best"], mean)
            g["sum"], g["done"] = 0.0, 0
        return problem
