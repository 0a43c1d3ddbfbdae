"""Stopping `rgbx train` from outside: SIGTERM (what a scheduler sends when it pre-empts a job) ends it as Ctrl-C does,
with a checkpoint of the last step and the way to continue, instead of killing the process without a word."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from rgbx.engine.checkpoint import load_state
from tests.conftest import make_dataset

TINY = ["model.backbone=mit_nano", "model.head_channels=16", "data.crop_size=[16,16]", "data.num_workers=0",
        "train.batch_size=2", "train.eval_batch_size=2", "optim.warmup_iters=2", "model.modalities=[rgb,depth]"]


def test_sigterm_stops_training_with_a_checkpoint_of_its_last_step(tmp_path):
    """No checkpoint is due for 100000 iterations: the one the run leaves is the one SIGTERM made it write, at the
    end of the step it interrupted, and the message says --resume continues from there. The signal goes to the whole
    process group, as SLURM sends it to every process of a job: the DataLoader worker gets it too (it ended, and the
    main process failed half way through a step with "DataLoader worker ... is killed by signal")."""
    root = make_dataset(tmp_path / "d", n=6, modalities=("rgb", "depth"))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rgbx.cli.main", "train", "synth_cmx_b0", f"data.root={root}", *TINY,
           f"output_dir={run}", "train.iters=100000", "train.checkpoint_every=100000", "train.eval_every=0",
           "train.log_every=1", "data.num_workers=1"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = run / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # two logged iterations (a header and two rows)
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().endswith("rgbx train: terminated") and "Traceback" not in err
    state = run / "checkpoints" / "last.state.pt"
    saved = load_state(state)["iteration"]
    assert 2 <= saved < 100000
    assert f"stopped at iteration {saved}; the same command with --resume continues from there (saved now: " \
           f"{state})" in " ".join(out.split())
