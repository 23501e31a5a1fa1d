import pandas as pd
import pytest
import torch

from advneurons.models import checkpoint
from advneurons.training.loop import TrainConfig
from training_helpers import train_tiny, write_small_splits


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return write_small_splits(tmp_path_factory.mktemp("digits"))


_train = train_tiny


CFG = TrainConfig(method="pat", epochs=3, batch_size=32, eps=16, steps=2, augmentation="crop")


def test_killed_run_resumes_to_the_same_weights(splits, tmp_path):
    _train(splits, tmp_path / "straight", CFG)
    first = _train(splits, tmp_path / "resumed", CFG, stop_after_epoch=1)
    assert first == {"stopped_after_epoch": 1}
    assert (tmp_path / "resumed" / "resume.pt").exists() and not (tmp_path / "resumed" / "model.pt").exists()
    _train(splits, tmp_path / "resumed", CFG)
    assert not (tmp_path / "resumed" / "resume.pt").exists()
    a, _ = checkpoint.load_model(tmp_path / "straight" / "model.pt")
    b, _ = checkpoint.load_model(tmp_path / "resumed" / "model.pt")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    ma = pd.read_csv(tmp_path / "straight" / "metrics.csv")
    mb = pd.read_csv(tmp_path / "resumed" / "metrics.csv")
    assert ma.epoch.tolist() == [1, 2, 3] == mb.epoch.tolist()
    pd.testing.assert_frame_equal(ma.drop(columns="seconds"), mb.drop(columns="seconds"))
    assert {"train_adv_acc", "val_clean_acc"} <= set(ma.columns)


def test_resume_file_from_other_settings_is_ignored(splits, tmp_path):
    _train(splits, tmp_path, CFG, stop_after_epoch=1)
    other = TrainConfig(method="vanilla", epochs=2, batch_size=32)
    _train(splits, tmp_path, other)
    assert pd.read_csv(tmp_path / "metrics.csv").epoch.tolist() == [1, 2]


def test_same_seed_same_weights_and_metadata(splits, tmp_path):
    cfg = TrainConfig(method="vanilla", epochs=1, batch_size=32)
    meta = _train(splits, tmp_path / "a", cfg)
    _train(splits, tmp_path / "b", cfg)
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the same bytes: the recorded sha256 identifies the weights (run-specific metadata stays in meta.json)
    assert checkpoint.file_digest(tmp_path / "a" / "model.pt") == checkpoint.file_digest(tmp_path / "b" / "model.pt")
    assert meta["seed"] == 3 and meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["cpu"] and meta["versions"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert meta["params"]["training"]["method"] == "vanilla"


def test_training_config_rejects_unknown_settings():
    with pytest.raises(ValueError, match="unknown training settings: epoch"):
        TrainConfig.from_dict({"method": "pat", "epoch": 3})
    with pytest.raises(ValueError, match="unknown training method"):
        TrainConfig(method="trades")


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture
def saved(tmp_path, tiny_vgg):
    path = tmp_path / "model.pt"
    checkpoint.save_model(tiny_vgg, path, "vgg16", "digits", 0.0625, 10, {"note": "test"})
    return path


def test_checkpoint_round_trip(saved, tiny_vgg):
    model, ckpt = checkpoint.load_model(saved)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), tiny_vgg(x))
    assert ckpt["meta"] == {"note": "test"}


def test_truncated_checkpoint_is_a_clear_error(saved):
    blob = saved.read_bytes()
    saved.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or not a PyTorch checkpoint"):
        checkpoint.load_model(saved)


def test_foreign_checkpoint_is_a_clear_error(tmp_path, tiny_vgg):
    path = tmp_path / "foreign.pt"
    torch.save(tiny_vgg.state_dict(), path)  # a bare state dict from some other project
    with pytest.raises(checkpoint.CheckpointError, match="not an advneurons model checkpoint"):
        checkpoint.load_model(path)


def test_checkpoint_with_code_payload_is_refused(tmp_path, saved):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    evil = tmp_path / "evil.pt"
    payload = torch.load(saved, weights_only=True)
    payload["meta"] = Payload()
    torch.save(payload, evil)
    with pytest.raises(checkpoint.CheckpointError, match="refused"):
        checkpoint.load_model(evil)
    assert not marker.exists()
