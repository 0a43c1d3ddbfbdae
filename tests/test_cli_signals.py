"""Stopping `rgbx train` from outside: SIGTERM (what a scheduler sends when it pre-empts a job) ends it as Ctrl-C does,
with the way to continue, instead of killing the process without a word."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from rgbx.engine.checkpoint import load_state
from tests.conftest import make_dataset, wait_for_checkpoint

TINY = ["model.backbone=mit_nano", "model.head_channels=16", "data.crop_size=[16,16]", "data.num_workers=0",
        "train.batch_size=2", "train.eval_batch_size=2", "optim.warmup_iters=2", "model.modalities=[rgb,depth]"]


def test_sigterm_stops_training_with_the_way_to_resume(tmp_path):
    root = make_dataset(tmp_path / "d", n=6, modalities=("rgb", "depth"))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rgbx.cli.main", "train", "synth_cmx_b0", f"data.root={root}", *TINY,
           f"output_dir={run}", "train.iters=100000", "train.checkpoint_every=2", "train.eval_every=0"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    state = run / "checkpoints" / "last.state.pt"
    wait_for_checkpoint(proc, state, 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().endswith("rgbx train: terminated") and "Traceback" not in err
    assert "with --resume continues from its last checkpoint" in " ".join(out.split())
    assert 2 <= load_state(state)["iteration"] < 100000
