"""MS3 (method.name=ms3): the equations on hand-made cases, the momentum rule, gradients, the preset through the CLI
(train, resume, zero-shot eval) and clear errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

import rgbx
from rgbx.cli.main import main
from rgbx.data.sample import Batch
from rgbx.engine.config import MethodConfig
from rgbx.engine.zero_shot import load_zero_shot, zero_shot_predict
from rgbx.errors import ConfigError
from rgbx.methods import METHODS
from rgbx.methods.ms3 import (
    load_class_embeddings,
    multi_label_nce,
    multi_label_targets,
    relation_scores,
    save_class_embeddings,
    visual_embeddings,
)
from rgbx.models.weights import read_state_dict
from tests.conftest import run_killed_at

CLASSES = ["a/ground", "a/box", "a/person", "b/crate", "b/person"]
SOURCES = ["a", "a", "a", "b", "b"]


# -- the equations ------------------------------------------------------------------------------------------------
def test_pairing_loss_equals_hand_computed_eq1_and_eq7():
    tau = 0.5
    pixels = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # I (unit vectors)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # T
    labels = torch.tensor([0, 2])
    s = [[(pixels[i] @ text[k]).item() / tau for k in range(3)] for i in range(2)]
    denominators = [sum(math.exp(v) for v in row) for row in s]
    eq1 = -(math.log(math.exp(s[0][0]) / denominators[0]) + math.log(math.exp(s[1][2]) / denominators[1])) / 2
    got = multi_label_nce(pixels @ text.T / tau, labels)
    assert got.item() == pytest.approx(eq1, rel=1e-6)
    extra = torch.zeros(3, 3, dtype=torch.bool)
    extra[0, 1] = True  # Ỹ_0^1: pixels of class 0 are also pulled to class 1
    eq7 = -(math.log((math.exp(s[0][0]) + math.exp(s[0][1])) / denominators[0])
            + math.log(math.exp(s[1][2]) / denominators[1])) / 2
    assert multi_label_nce(pixels @ text.T / tau, labels, extra).item() == pytest.approx(eq7, rel=1e-6)
    assert eq7 < eq1
    # a class without a visual embedding leaves the sum, and its pixels are skipped
    valid = torch.tensor([True, True, False])
    only_first = -math.log(math.exp(s[0][0]) / (math.exp(s[0][0]) + math.exp(s[0][1])))
    assert multi_label_nce(pixels @ text.T / tau, labels, None, valid).item() == pytest.approx(only_first, rel=1e-6)


def test_multi_label_targets_take_the_similar_class_of_another_dataset_only():
    # structured embeddings: person of both datasets the same direction, crate far from person
    text = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0.9, 0, 0.4], [0, 0, 1.0, 0]]), dim=1)
    labels = torch.tensor([2, 2, 2, 1, 1])
    pixels = torch.nn.functional.normalize(torch.tensor(
        [[0.1, 0, 1.0, 0], [0, 0.1, 1.0, 0], [0.1, 0.1, 1.0, 0], [0, 1.0, 0, 0.1], [0.2, 1.0, 0, 0]]), dim=1)
    scores, seen = relation_scores(pixels, labels, text, 5)  # Eq. 5
    assert scores[2, 4] == pytest.approx(scores[2, 2].item())
    assert torch.allclose(scores[2], (pixels[:3] @ text.T).mean(0))
    targets = multi_label_targets(scores, seen, torch.tensor([0, 0, 0, 1, 1]))  # Eq. 6
    assert targets[2].tolist() == [False, False, False, False, True]  # a/person → b/person, not b/crate
    assert not targets[1].any()  # a/box: b/crate is similar but less than a/box itself
    assert not targets[0].any() and not targets[4].any()  # classes without pixels get no mapping
    # unidirectional: a row of relations that says b/crate ⊂ a/box, not the reverse
    rel = torch.tensor([[1.0, 0.0], [0.9, 0.5]])
    both = multi_label_targets(rel, torch.tensor([True, True]), torch.tensor([0, 1]))
    assert both.tolist() == [[False, False], [True, False]]


def test_visual_embeddings_follow_eq4():
    bank = torch.zeros(2, 3, 2)
    bank[0, 0] = torch.tensor([1.0, 0.0])
    bank[0, 1] = torch.tensor([0.6, 0.8])
    bank[0, 2] = torch.tensor([5.0, 5.0])  # beyond the count: not in the bank
    count = torch.tensor([2, 0])
    old = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    v, valid = visual_embeddings(bank, count, old, torch.tensor([True, False]))
    w = [0.0, 0.8]  # cos(M_i, V_0^old)
    expected = (w[0] * bank[0, 0] + w[1] * bank[0, 1]) / 2
    assert torch.allclose(v[0], expected / expected.norm())
    assert valid.tolist() == [True, False]
    v, _ = visual_embeddings(bank, count, old, torch.tensor([False, False]))  # no old V yet: plain mean
    mean = (bank[0, 0] + bank[0, 1]) / 2
    assert torch.allclose(v[0], mean / mean.norm())


# -- the method on a tiny model -----------------------------------------------------------------------------------
def tiny(num_classes=5, seed=0):
    torch.manual_seed(seed)
    return rgbx.create_model(backbone="mit_nano", fusion="mean", modalities=["rgb", "depth"], num_classes=num_classes,
                             head_channels=16)


def tiny_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 5, (2, 16, 16), generator=g)
    label[:, :2] = 255
    return Batch({"rgb": torch.randn(2, 3, 16, 16, generator=g), "depth": torch.randn(2, 1, 16, 16, generator=g)},
                 {"rgb": torch.ones(2, dtype=torch.bool), "depth": torch.ones(2, dtype=torch.bool)}, label,
                 [{"source": "a"}, {"source": "b"}])


@pytest.fixture
def embeddings(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "names.safetensors"
    save_class_embeddings(path, {n: torch.randn(8, generator=g) for n in ("ground", "box", "person", "crate", "sky")})
    return path


def ms3(embeddings, model, **options):
    config = MethodConfig(name="ms3", options={"class_embeddings": str(embeddings), "classes": CLASSES,
                                               "class_sources": SOURCES, "hidden": 8, **options})
    method = METHODS.get("ms3")(config, ignore_index=255)
    method.prepare(model, torch.device("cpu"))
    return method


def test_momentum_encoder_moves_by_exactly_the_momentum_rule(embeddings):
    model = tiny()
    method = ms3(embeddings, model, encoder_momentum=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # the live model moves away from the momentum copy
    before = [p.clone() for p in method.memory.encoder.parameters()]
    before_proj = [p.clone() for p in method.memory.visual_proj.parameters()]
    live = [p.detach().clone() for p in model.parameters()]
    method.step(model, tiny_batch(), torch.Generator().manual_seed(0))
    for old, p, new in zip(before, live, method.memory.encoder.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * p, rtol=0, atol=1e-6)
        assert not torch.equal(new, p)
    for old, p, new in zip(before_proj, method.head.visual_proj.parameters(), method.memory.visual_proj.parameters(),
                           strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * p.detach(), rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in method.memory.parameters())
    assert int(method.memory.steps) == 1 and int(method.memory.bank_count.sum()) > 0


def test_step_losses_gradients_reach_m_i_and_the_probe_stops_at_the_decoder(embeddings):
    model = tiny()
    method = ms3(embeddings, model)
    assert method.text.shape == (5, 8)
    assert torch.equal(method.text[2], method.text[4])  # a/person and b/person share "person"
    losses = method.step(model, tiny_batch(), torch.Generator().manual_seed(0))
    assert set(losses) == {"language", "visual", "probe"} and all(torch.isfinite(v) for v in losses.values())
    losses["language"].backward(retain_graph=True)
    improver = method.head.improve.mlp[2].weight
    assert improver.grad is not None and improver.grad.abs().sum() > 0  # M_I learns from Eq. 1 / 7
    assert model.encoder.parameters().__next__().grad is not None
    model.zero_grad(set_to_none=True)
    losses["probe"].backward()
    assert all(p.grad is None for p in model.encoder.parameters())  # the probe does not train the encoder
    assert model.head.classifier.weight.grad is not None


def test_options_and_embedding_errors_are_clear(embeddings, tmp_path):
    model = tiny()
    with pytest.raises(ConfigError, match="class_embeddings is required"):
        METHODS.get("ms3")(MethodConfig(name="ms3", options={}))
    with pytest.raises(ConfigError, match=r"names.safetensors: no embedding for class 'b/truck' or 'truck'"):
        load_class_embeddings(embeddings, ["a/box", "b/truck"], ["a", "b"])
    with pytest.raises(ConfigError, match="not found"):
        ms3(tmp_path / "none.safetensors", model)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_class_embeddings(tmp_path / "bad.safetensors", ["box"])
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        ms3(embeddings, model, temperature=0)
    with pytest.raises(ConfigError, match="lists 5 classes, the model has 3"):
        ms3(embeddings, tiny(num_classes=3))
    with pytest.raises(ConfigError, match="unknown key"):
        ms3(embeddings, model, tau=1)


def test_heads_return_the_decoder_map_without_changing_the_logits():
    for head in ("mlp", "ham", "fcn"):
        torch.manual_seed(0)
        model = rgbx.create_model(backbone="mit_nano", fusion="mean", modalities=["rgb"], num_classes=3,
                                  head=head, head_channels=16).eval()
        x = {"rgb": torch.randn(1, 3, 32, 32)}
        plain, with_decoder = model(x), model(x, return_decoder=True)
        assert plain.decoder is None and with_decoder.decoder.shape[1] == model.head.classifier.in_channels
        assert torch.equal(plain.logits, with_decoder.logits), head


# -- the preset through the CLI -----------------------------------------------------------------------------------
TINY = ["model.backbone=mit_nano", "model.head_channels=16", "data.crop_size=[32,40]", "data.scale_range=[1,1]",
        "data.num_workers=0", "train.batch_size=2", "train.eval_batch_size=2", "train.log_every=1",
        "train.eval_every=0", f"train.threads={torch.get_num_threads()}", "optim.warmup_iters=1", "method.options.hidden=16",
        "method.options.multi_label_after=1"]


def test_preset_trains_resumes_and_predicts_zero_shot(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    for name, seed in (("synth_a", 1), ("synth_b", 2)):
        assert main(["synth", str(data / name), "--train", "4", "--val", "2", "--test", "2", "--size", "32x40",
                     "--seed", str(seed), "--workers", "1"]) == 0
    names = data / "synth_ms3_names.safetensors"
    monkeypatch.chdir(tmp_path)  # the preset's data.root and class_embeddings are relative: data/...
    assert main(["embed-classes", str(names), "--config", "synth_ms3", "--encoder", "random:16"]) == 0
    run = ["train", "synth_ms3", *TINY, "train.iters=4", "train.checkpoint_every=2"]
    assert main([*run, "output_dir=full", "--quiet"]) == 0
    out = tmp_path / "full"
    for f in ("config.yaml", "metrics.csv", "model.safetensors", "ms3_head.safetensors", "checkpoints/last.state.pt"):
        assert (out / f).is_file(), f
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"language", "visual", "probe"} <= set(header)
    config = (out / "config.yaml").read_text()
    assert "city/person" in config and "depot/box" in config  # the union's classes, filled from the data

    # killed after iteration 3 and resumed: the same weights, MS3 head and memory as the uninterrupted run
    run_killed_at(monkeypatch, 3, lambda: main([*run, "output_dir=killed", "--quiet"]))
    assert main([*run, "output_dir=killed", "--quiet", "--resume"]) == 0
    for f in ("model.safetensors", "ms3_head.safetensors"):
        full, resumed = read_state_dict(out / f), read_state_dict(tmp_path / "killed" / f)
        assert full.keys() == resumed.keys()
        assert all(torch.equal(full[k], resumed[k]) for k in full), f

    # zero-shot: a new class set given only by names
    segmentor = load_zero_shot(out / "model.safetensors", names, ["sky", "person", "tree"])
    batch = {"rgb": torch.randn(1, 3, 32, 40), "depth": torch.randn(1, 1, 32, 40),
             "thermal": torch.randn(1, 1, 32, 40)}
    labels = zero_shot_predict(segmentor, batch)
    assert labels.shape == (1, 32, 40) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 2}
    with pytest.raises(ConfigError, match="no embedding for class 'vessel'"):
        load_zero_shot(out / "model.safetensors", names, ["vessel"])
    report = tmp_path / "zero_shot.json"
    assert main(["eval", str(out / "model.safetensors"), "--data", str(data / "synth_a"), "--split", "test",
                 "--zero-shot", str(names), "--workers", "0", "--batch-size", "2", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    per_class = result["subsets"]["rgb+depth+thermal"]["all"]
    assert 0.0 <= per_class["miou"] <= 1.0
    assert "zero-shot from" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["embed-classes", str(tmp_path / "x.safetensors"), "--encoder", "word2vec:x", "--classes", "a"]) == 2
    assert "expected open_clip:ARCH:PRETRAINED, hf:MODEL_ID_OR_PATH or random:DIM" in capsys.readouterr().err
    assert main(["embed-classes", str(tmp_path / "x.safetensors"), "--encoder", "random:16"]) == 2
    assert "no class names" in capsys.readouterr().err
    try:
        import open_clip  # noqa: F401
    except ImportError:
        assert main(["embed-classes", str(tmp_path / "x.safetensors"), "--classes", "a"]) == 2
        assert "pip install open_clip_torch" in capsys.readouterr().err


def _distributed_worker(rank: int, world: int, init: str, embeddings: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    model = tiny()  # the same weights on every process, as DDP keeps them
    method = ms3(embeddings, model, pixels_per_class=4)
    for step in range(2):
        method.step(model, tiny_batch(seed=10 * rank + step), torch.Generator().manual_seed(rank))  # own batches
    m = method.memory
    torch.save({k: getattr(m, k).clone() for k in ("bank", "bank_count", "visual", "relation", "relation_seen")},
               f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_processes_of_a_launch_keep_one_memory_bank(embeddings, tmp_path):
    """Under torch.distributed each process draws its pixels from its own batches; they are gathered, so the
    memory bank, V (Eq. 4) and S (Eq. 5) are the same on every process, and hold both processes' draws."""
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, f"file://{tmp_path}/init", str(embeddings), str(tmp_path)), nprocs=2,
             join=True)
    a, b = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    single = ms3(embeddings, tiny(), pixels_per_class=4)
    single.step(tiny(), tiny_batch(seed=0), torch.Generator().manual_seed(0))
    # two processes × two steps of draws (bounded by the bank size) against one process's single step
    assert int(a["bank_count"].sum()) > int(single.memory.bank_count.sum())
