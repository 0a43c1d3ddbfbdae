"""`rgbx embed-classes OUT`: what it refuses to write over (a folder, a file that is not its own) and what it
replaces (its own earlier output)."""

from __future__ import annotations

from safetensors import safe_open

from rgbx.cli.main import main


def _embed(out, *classes):
    return main(["embed-classes", str(out), "--classes", *classes, "--encoder", "random:8"])


def test_an_existing_file_that_is_not_an_embedding_file_is_kept(tmp_path, capsys):
    notes = tmp_path / "keep.txt"
    notes.write_text("my notes, not embeddings")
    assert _embed(notes, "car") == 2
    err = capsys.readouterr().err
    assert f"OUT {notes}: exists and is not a class-embedding file written by rgbx embed-classes" in err
    assert "Traceback" not in err
    assert notes.read_text() == "my notes, not embeddings"
    # a safetensors file of another kind (model weights) is kept as well
    import torch
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2, 2)}, str(weights))
    before = weights.read_bytes()
    assert _embed(weights, "car") == 2
    assert "not a class-embedding file" in capsys.readouterr().err
    assert weights.read_bytes() == before


def test_an_earlier_embedding_file_is_replaced(tmp_path, capsys):
    out = tmp_path / "names.safetensors"
    assert _embed(out, "car") == 0
    assert _embed(out, "person", "road") == 0
    capsys.readouterr()
    with safe_open(str(out), framework="pt") as f:
        assert set(f.keys()) == {"person", "road"}


def test_a_folder_as_out_is_named_not_a_temp_file(tmp_path, capsys):
    folder = tmp_path / "good"
    folder.mkdir()
    assert _embed(folder, "car") == 2
    err = capsys.readouterr().err
    assert f"OUT {folder}: is a folder; give the name of the file to write" in err
    assert ".tmp" not in err and "Traceback" not in err
    assert list(folder.iterdir()) == []
