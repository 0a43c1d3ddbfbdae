"""A training state that cannot be read: the message says how to go on (a new run from the model weights saved with
it), and keeps torch's internal text short."""

from __future__ import annotations

import pytest

from rgbx.engine.checkpoint import load_model, load_state, save_model, save_state
from rgbx.errors import CheckpointError
from rgbx.models import create_model


def checkpoint(tmp_path):
    folder = tmp_path / "run" / "checkpoints"  # as the trainer writes them (STATE_FILE, LAST_WEIGHTS)
    model = create_model(backbone="mit_nano", fusion="mean", modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16)
    save_model(folder / "last.safetensors", model, {"classes": ["ground", "box", "person"]})
    state = save_state(folder / "last.state.pt", {"iteration": 5, "model": model.state_dict()})
    return state, folder / "last.safetensors"


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_state_names_the_weights_to_start_from(tmp_path, damage):
    state, weights = checkpoint(tmp_path)
    data = state.read_bytes()
    state.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(CheckpointError) as e:
        load_state(state)
    message = str(e.value)
    assert f"train.init_from={weights} starts a new run from them" in message, message
    assert "optimizer and scheduler state and the iteration count are lost" in message
    if damage == "truncated":
        assert "failed finding central directory" in message  # torch's reason, in brief
        assert "miniz" not in message and "high likelihood" not in message, message
        assert len(message) < 600 + 2 * len(str(weights)), message
    load_model(weights)  # the named file is a whole model


def test_a_damaged_state_without_weights_says_so(tmp_path):
    state, weights = checkpoint(tmp_path)
    weights.unlink()
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"no model weights saved with it .*last.safetensors. to start from: "
                                              r"move it away to start the run afresh"):
        load_state(state)
