"""Stopping a run with Ctrl-C or SIGTERM: the interrupt waits for the end of the step, the trainer saves a checkpoint
there, and --resume continues as if nothing had happened (the same weights and evaluations as an uninterrupted run;
the exact resume after a stop between two steps is in test_trainer.py's test_resume_in_process_is_bit_exact)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rgbx.engine.checkpoint import load_state
from rgbx.engine.interruption import InterruptHold
from rgbx.engine.report import Reporter
from rgbx.engine.trainer import Trainer
from rgbx.errors import Terminated
from tests.conftest import make_dataset
from tests.engine.test_trainer import tiny_config


def test_an_interrupt_in_a_held_section_waits_for_its_end():
    hold = InterruptHold()
    with pytest.raises(Terminated):
        hold.deliver(Terminated())  # outside a held section: at once
    finished = []
    with pytest.raises(Terminated):
        with hold.held():
            hold.deliver(Terminated())
            finished.append(True)  # the body goes on to its end
    assert finished == [True] and hold.pending is None
    with pytest.raises(KeyboardInterrupt) as raised:
        with hold.held():
            hold.deliver(Terminated())
            hold.deliver(KeyboardInterrupt())  # a second one while the first waits: at once
            finished.append(False)
    assert raised.type is KeyboardInterrupt and finished == [True]
    assert hold.pending is None
    with pytest.raises(ValueError):  # the body's own error wins; nothing is left waiting for the next section
        with hold.held():
            hold.deliver(Terminated())
            raise ValueError
    with hold.held():
        pass
    assert finished == [True]


def test_under_torchrun_the_hold_keeps_the_first_interrupt_for_the_vote_and_drops_the_rest():
    """torchrun's agent passes on the signal the scheduler may have sent every process already: a second one must not
    stop a process alone (the others would wait for it in the step's all-reduce)."""
    hold = InterruptHold(agreed=True)
    first = Terminated()
    hold.deliver(first)  # outside a held section too: kept
    with hold.held():
        hold.deliver(KeyboardInterrupt())  # dropped
    assert hold.pending is first
    with pytest.raises(ValueError):
        with hold.held():
            raise ValueError  # the trainer decides what a failure after the stop means: the interrupt stays
    assert hold.pending is first


def deliver_during_step(monkeypatch, iteration, interrupt):
    """The trainer's step hands ``interrupt`` to the trainer's hold (as rgbx train's signal handlers do) half way
    through step number ``iteration + 1``."""
    real_step = Trainer.train_step

    def step(self, batches):
        if self.iteration == iteration:
            self.interrupts.deliver(interrupt)
        return real_step(self, batches)

    monkeypatch.setattr(Trainer, "train_step", step)


def test_a_step_cut_off_half_way_is_not_saved(tmp_path, monkeypatch):
    """A second Ctrl-C stops the step half way; its weights are not saved."""
    root = make_dataset(tmp_path / "d", n=8)
    extra = ["train.iters=8", "train.checkpoint_every=3", "train.eval_every=0"]
    stopped = Trainer(tiny_config(root, tmp_path / "b", *extra), reporter=Reporter(quiet=True))
    real_step = Trainer.train_step

    def step(self, batches):
        if self.iteration == 4:
            self.interrupts.deliver(KeyboardInterrupt())
            self.interrupts.deliver(KeyboardInterrupt())
        return real_step(self, batches)

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    assert stopped.iteration == 4 and stopped.stop_checkpoint is None
    assert load_state(tmp_path / "b" / "checkpoints" / "last.state.pt")["iteration"] == 3


def test_a_stop_during_validation_validates_first_on_resume(tmp_path, monkeypatch):
    """Stopped while it validates at iteration 2 (no checkpoint due there): the state saved at 2 says the validation
    is due, and the resumed run does it before training on, so eval.jsonl, best.safetensors and the final state are
    an uninterrupted run's."""
    root = make_dataset(tmp_path / "d", n=8)
    extra = ["train.iters=4", "train.checkpoint_every=100", "train.eval_every=2"]
    Trainer(tiny_config(root, tmp_path / "a", *extra), reporter=Reporter(quiet=True)).fit()

    real_evaluate = Trainer.evaluate

    def stops(self, subsets=None):
        if self.iteration == 2:
            raise KeyboardInterrupt
        return real_evaluate(self, subsets)

    monkeypatch.setattr(Trainer, "evaluate", stops)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(root, tmp_path / "b", *extra), reporter=Reporter(quiet=True)).fit()
    monkeypatch.undo()
    state = load_state(tmp_path / "b" / "checkpoints" / "last.state.pt")
    assert state["iteration"] == 2 and state["validation_due"] is True
    assert not (tmp_path / "b" / "eval.jsonl").exists() or not (tmp_path / "b" / "eval.jsonl").read_text()
    Trainer(tiny_config(root, tmp_path / "b", *extra), resume=True, reporter=Reporter(quiet=True)).fit()

    def rows(run):
        return [json.loads(line) for line in (tmp_path / run / "eval.jsonl").read_text().splitlines()]

    assert [r["iteration"] for r in rows("b")] == [2, 4] and rows("b") == rows("a")
    for name in ("best.safetensors", "model.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    final = [load_state(tmp_path / run / "checkpoints" / "last.state.pt") for run in "ab"]
    assert final[0]["best_miou"] == final[1]["best_miou"] and "validation_due" not in final[1]
