"""IG-Defense: the LO-IR ranking against brute-force channel zeroing, the class-wise mask, the two-pass
defense and its expectation over noise, defended checkpoints, adaptive evaluation and the group analysis."""

import pandas as pd
import pytest
import torch

from advneurons.models import checkpoint
from advneurons.attacks import AttackSpec, ExpectedLogits, attack_target
from advneurons.models.defended import ig_defense_record
from advneurons.defenses.ig_defense import (
    GROUPS,
    IGDefense,
    ig_defense_analysis,
    class_mask,
    group_change,
    ig_defense_model,
    lo_ir_importance,
    penultimate,
    top_k_count,
)
from advneurons.evaluation.robustness import evaluate_model
from tiny_models import tiny_model


def _model(arch="resnet18"):
    torch.manual_seed(0)
    model = tiny_model(arch).eval()
    with torch.no_grad():  # a non-trivial head: random weights and biases
        model.fc.weight.normal_()
        model.fc.bias.normal_()
    return model


@pytest.mark.parametrize("arch", ["vgg16", "resnet18"])
def test_lo_ir_equals_zeroing_each_channel(arch):
    model = _model(arch)
    x = torch.rand(25, 3, 32, 32)
    y = torch.arange(25) % 10
    importance = lo_ir_importance(model, x, y, batch_size=7)
    with torch.no_grad():
        full = model(x)
        channels = model.fc.in_features
        brute = torch.zeros(10, channels)
        for u in range(channels):
            def zero(_m, _i, out, u=u):
                out = out.clone()
                out[:, u] = 0
                return out

            handle = model.penultimate().register_forward_hook(zero)
            dropped = model(x)
            handle.remove()
            change = (full - dropped).gather(1, y[:, None]).abs().squeeze(1)
            for c in range(10):
                brute[c, u] = change[y == c].mean()
    assert torch.allclose(importance, brute, rtol=1e-4, atol=1e-5)


def test_a_class_without_images_is_refused():
    with pytest.raises(ValueError, match="class"):
        lo_ir_importance(_model(), torch.rand(4, 3, 32, 32), torch.tensor([0, 0, 1, 1]))


def test_top_k_counts_and_mask():
    assert top_k_count(64, 10) == 7 and top_k_count(512, 100 * 50 / 512) == 50 and top_k_count(8, 1) == 1
    with pytest.raises(ValueError):
        top_k_count(10, 0)
    importance = torch.tensor([[0.1, 0.9, 0.5, 0.5], [3.0, 2.0, 1.0, 0.0]])
    mask = class_mask(importance, 2)
    assert mask.tolist() == [[0, 1, 1, 0], [1, 1, 0, 0]]  # the tie at 0.5 goes to the lower index
    with pytest.raises(ValueError, match="k must be"):
        class_mask(importance, 5)


def test_two_pass_defense_masks_the_features_of_the_predicted_class():
    model = _model()
    mask = class_mask(torch.rand(10, model.fc.in_features), 3)
    defense = IGDefense(model, mask, noise_std=0.0, temperature=100.0, eot_samples=4).eval()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        features, logits = penultimate(model, x)
        probs = torch.softmax(100.0 * logits, dim=1)
        expected = model.fc(features * (probs @ mask))
        assert torch.allclose(defense(x), expected, atol=1e-5)
        # with a one-hot prediction only the predicted class's k channels reach the head
        hard = model.fc(features * mask[logits.argmax(1)])
        assert torch.allclose(defense(x), hard, atol=1e-3)


def test_expected_logits_average_the_draws_values_and_gradients():
    model = _model()
    defense = IGDefense(model, class_mask(torch.rand(10, model.fc.in_features), 3), noise_std=0.3,
                        temperature=1.0, eot_samples=5).eval()
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    torch.manual_seed(11)
    eot = defense.expected_logits(x)
    (grad_eot,) = torch.autograd.grad(eot.sum(), x)
    torch.manual_seed(11)  # the same five noise draws, one forward each
    draws = torch.stack([defense(x) for _ in range(5)])
    (grad_draws,) = torch.autograd.grad(draws.mean(0).sum(), x)
    assert torch.allclose(eot, draws.mean(0), atol=1e-5)
    assert torch.allclose(grad_eot, grad_draws, atol=1e-5)
    assert not torch.allclose(draws[0], draws[1])  # the defense really is random
    target = attack_target(defense)
    assert isinstance(target, ExpectedLogits) and target.fc is model.fc and attack_target(model) is model


def test_defended_checkpoint_round_trips_with_weights_only(tmp_path):
    model = _model()
    mask = class_mask(torch.rand(10, model.fc.in_features), 2)
    defense = IGDefense(model, mask, 0.0, 100.0, 3)
    checkpoint.save_model(defense, tmp_path / "d.pt", "resnet18", "digits", 0.0625, 10, {"m": 1},
                          defense=ig_defense_record(mask, 0.0, 100.0, 3))
    loaded, ckpt = checkpoint.load_model(tmp_path / "d.pt")
    assert isinstance(loaded, IGDefense) and ckpt["defense"]["type"] == "ig_defense"
    assert torch.equal(loaded.mask, mask) and loaded.eot_samples == 3
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), defense.eval()(x), atol=1e-6)
    bad = dict(ckpt, defense={"type": "unheard_of"})
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(checkpoint.CheckpointError, match="unheard_of"):
        checkpoint.load_model(tmp_path / "bad.pt")


def test_group_change_by_hand():
    # 3 classes, 6 channels; class tops: 0 -> {0, 1}, 1 -> {1, 2}, 2 -> {3}; channels 4, 5 in no top-k
    mask = torch.zeros(3, 6)
    mask[0, [0, 1]] = mask[1, [1, 2]] = mask[2, [3]] = 1
    clean = torch.tensor([[1.0, 1.0, 2.0, 4.0, 1.0, 0.0]])
    adv = torch.tensor([[0.5, 1.0, 4.0, 2.0, 2.0, 0.0]])
    rows = group_change(clean, adv, torch.tensor([0]), torch.tensor([1]), mask).set_index("group")
    assert rows.loc[GROUPS[0], "relative_change"] == pytest.approx((1.5 - 2.0) / 2.0)  # {0, 1}
    assert rows.loc[GROUPS[1], "relative_change"] == pytest.approx((5.0 - 3.0) / 3.0)  # {1, 2}
    assert rows.loc[GROUPS[2], "relative_change"] == pytest.approx((2.0 - 4.0) / 4.0)  # {3}
    assert rows.loc[GROUPS[3], "relative_change"] == pytest.approx((2.0 - 1.0) / 1.0)  # {4, 5}
    assert rows.loc[GROUPS[3], "channels"] == 2 and (rows["overlap"] == 1).all()  # channel 1 is in both tops


def test_no_fooled_image_gives_an_empty_summary_of_all_four_groups():
    from advneurons.defenses.ig_defense import summarise_changes

    empty = group_change(torch.zeros(0, 6), torch.zeros(0, 6), torch.zeros(0, dtype=torch.long),
                         torch.zeros(0, dtype=torch.long), torch.ones(3, 6))
    summary = summarise_changes(empty)
    assert list(summary.group) == list(GROUPS) and (summary.images == 0).all()


def test_randomised_defense_is_attacked_adaptively_and_says_so():
    model = _model()
    defense = IGDefense(model, class_mask(torch.rand(10, model.fc.in_features), 3), 0.05, 100.0, 2).eval()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    calls = {"n": 0}
    original = defense.expected_logits

    def counted(inputs, n_samples=None):
        calls["n"] += 1
        return original(inputs, n_samples)

    defense.expected_logits = counted
    records, _ = evaluate_model(defense, x, y, {"fgsm": {"type": "fgsm", "eps": 8}}, "m", seed=0)
    assert calls["n"] >= 1  # the attack went through the expected logits
    fgsm = records[records.attack == "fgsm"].iloc[0]
    assert "EOT over 2 noise draws" in fgsm.description
    assert "EOT" not in records[records.attack == "clean"].iloc[0].description
    plain, _ = evaluate_model(model, x, y, {"fgsm": {"type": "fgsm", "eps": 8}}, "m", seed=0)
    assert "EOT" not in plain[plain.attack == "fgsm"].iloc[0].description


def test_workflow_steps_on_a_trained_model(tmp_path, trained_vgg_path, digits_files):
    defended = ig_defense_model(trained_vgg_path, digits_files["train"], digits_files["test"], 10, 16, 100, 2, 300, 0,
                                tmp_path / "d.pt", tmp_path / "ranking.csv", tmp_path / "d.json")
    ranking = pd.read_csv(tmp_path / "ranking.csv")
    channels = defended.mask.shape[1]
    assert len(ranking) == 10 * channels and (ranking.groupby("class").in_mask.sum() == top_k_count(channels, 10)).all()
    assert (ranking[ranking["rank"] == 1].importance.to_numpy() >= ranking.groupby("class").importance.max().to_numpy() - 1e-9).all()
    attack = {"type": "pgd", "eps": 32, "steps": 5}
    summary = ig_defense_analysis(tmp_path / "d.pt", digits_files["test"], attack, 60, 0, tmp_path / "a.csv",
                                  tmp_path / "s.csv", tmp_path / "s.md", tmp_path / "a.png", tmp_path / "a.json",
                                  "vgg16-test")
    assert list(summary.group) == list(GROUPS) and (summary.images > 0).sum() >= 3
    assert (tmp_path / "a.png").stat().st_size > 0 and "fooled it" in (tmp_path / "s.md").read_text()
    with pytest.raises(ValueError, match="already carries a defense"):
        ig_defense_model(tmp_path / "d.pt", digits_files["train"], digits_files["test"], 10, 16, 100, 2, 30, 0,
                         tmp_path / "x.pt", tmp_path / "x.csv", tmp_path / "x.json")
    with pytest.raises(ValueError, match="not an IG-Defense"):
        ig_defense_analysis(trained_vgg_path, digits_files["test"], attack, 10, 0, *(tmp_path / f"y{i}" for i in range(5)),
                            "m")
    assert AttackSpec.from_config(attack).type == "pgd"
