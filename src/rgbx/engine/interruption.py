"""Stopping a training run from outside (Ctrl-C, a scheduler's SIGTERM) at a point where its state can be saved.

An interrupt raised inside a training step can leave the weights half updated (the optimizer stopped between two
parameters), and such a state must not be saved. :class:`InterruptHold` lets whoever turns signals into exceptions
(``rgbx train``) hand them over with :meth:`InterruptHold.deliver`: outside a :meth:`InterruptHold.held` section the
exception is raised at once, inside one it waits until the section ends (a step takes seconds at most). A second
interrupt while one waits is raised at once: pressing Ctrl-C again always stops.

A torchrun launch stops at a step boundary that all its processes agree on (``agreed=True``): a process that stopped
alone would leave the others waiting in the next step's all-reduce, and one that waited would wait on those that had
stopped. The hold keeps the first interrupt for the trainer, whose processes vote at each step boundary
(:class:`rgbx.engine.distributed.StopVote`). :func:`quiet_worker_exit` keeps a signal to the whole job from failing
the step through the DataLoader workers.
"""

from __future__ import annotations

import contextlib
import os
import signal


class InterruptHold:
    """Holds interrupts back while a :meth:`held` section runs (see the module's docstring).

    ``agreed=True`` (a torchrun launch): the first interrupt is never raised here; it waits in :attr:`pending` until
    the trainer's processes have agreed to stop. Later ones are dropped: torchrun's agent passes the signal it gets
    on to every process, which a scheduler (SLURM) may have signalled already, and the agent's SIGKILL at the end of
    its shutdown timeout (30 s) is the hard stop."""

    def __init__(self, agreed: bool = False):
        self.agreed = agreed
        self.pending: BaseException | None = None
        self._holding = False

    def deliver(self, interrupt: BaseException) -> None:
        """Raise ``interrupt`` now, or keep it for the end of the held section running now (for the trainer's vote,
        ``agreed``)."""
        if self.pending is None and (self._holding or self.agreed):
            self.pending = interrupt
            return
        if self.agreed:
            return
        raise interrupt

    @contextlib.contextmanager
    def held(self):
        """Interrupts delivered while the body runs are raised when it has finished (not when it raised itself;
        ``agreed``: not here at all)."""
        self._holding = True
        try:
            yield
        except BaseException:
            if not self.agreed:
                self.pending = None  # the body's own exception stops the run anyway
            raise
        finally:
            self._holding = False
        if self.agreed:
            return
        pending, self.pending = self.pending, None
        if pending is not None:
            raise pending


def _exit_quietly(signum, frame) -> None:
    os._exit(0)


def quiet_worker_exit(worker_id: int) -> None:
    """A training DataLoader's ``worker_init_fn``: its workers end on SIGTERM with exit status 0 instead of being
    killed by it. A scheduler that signals every process of a job (SLURM) ends the workers with the main process;
    killed by the signal, a worker made the main process fail half way through its step ("DataLoader worker ... is
    killed by signal: Terminated", raised from the main process's SIGCHLD handler) instead of stopping after the step
    with a checkpoint. A worker that ends with status 0 is no failure there; should the main process go on asking it
    for data it still fails ("exited unexpectedly"). (Ctrl-C: the workers already end with status 0.)"""
    signal.signal(signal.SIGTERM, _exit_quietly)
