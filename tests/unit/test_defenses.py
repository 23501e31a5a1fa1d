"""Training-time defenses (ALP, NAT, EAT, SNS fine-tuning) and the final comparison tables."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from advneurons.models import checkpoint
from advneurons.models.architectures import layer_channels
from advneurons.report.findings import MASKING
from advneurons.training.sns import (
    StabilityLoss,
    choose_channels,
    freeze_below,
    selected_layers,
    sns_batch_loss,
)
from advneurons.training.loop import TrainConfig, nat_examples, train_model
from training_helpers import train_tiny, write_small_splits
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return write_small_splits(tmp_path_factory.mktemp("digits"))


_train = train_tiny


@pytest.fixture(scope="module")
def base(splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    _train(splits, out, TrainConfig(method="vanilla", epochs=2, batch_size=32))
    return out / "model.pt"


def test_stability_loss_is_the_mean_l1_distance_of_the_chosen_channels():
    torch.manual_seed(0)
    model = tiny_model("vgg16").eval()
    layers = selected_layers(model, "vgg16", ["conv8", "conv13"])
    channels = {"conv8": torch.tensor([0, 3]), "conv13": torch.tensor([1])}
    x, x_adv = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    feats = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: feats.__setitem__(n, o)) for n, m in layers.items()]
    with torch.no_grad():
        model(torch.cat([x, x_adv]))
    for h in hooks:
        h.remove()
    expected = 0.0
    for name, idx in channels.items():
        f = feats[name][:, idx]
        # per image: sum over chosen channels of mean |F(x) - F(x')| over the map; then mean over images
        expected += (f[:4] - f[4:]).abs().flatten(2).mean(2).sum(1).mean().item()
    with StabilityLoss(layers, channels) as stab, torch.no_grad():
        y = torch.zeros(4, dtype=torch.long)
        loss, clean, adv, l_sns = sns_batch_loss(model, stab, x, y, x_adv, lam=2.0, variant="sen")
    assert l_sns.item() == pytest.approx(expected, rel=1e-5)
    task = 0.5 * F.cross_entropy(clean, y) + 0.5 * F.cross_entropy(adv, y)
    assert loss.item() == pytest.approx(task.item() + 2.0 * expected, rel=1e-5)
    with StabilityLoss(layers, channels) as stab, torch.no_grad():
        loss_cls, clean, _, l_sns = sns_batch_loss(model, stab, x, y, x_adv, lam=2.0, variant="cls")
    assert loss_cls.item() == pytest.approx(F.cross_entropy(clean, y).item() + 2.0 * l_sns.item(), rel=1e-5)


def test_channel_choices_per_variant():
    torch.manual_seed(0)
    model = tiny_model("vgg16").eval()
    layers = selected_layers(model, "vgg16", None)
    assert list(layers) == [f"conv{i}" for i in range(8, 14)]
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    counts = layer_channels(model)
    every = choose_channels(model, layers, "all", 10, x, y, 0.1, 2, None, gen(0))
    assert all(len(c) == counts[n] for n, c in every.items())
    sen = choose_channels(model, layers, "sen", 10, x, y, 0.1, 2, None, gen(0))
    assert sen.keys() == layers.keys()
    assert all(len(c) == max(1, -(-counts[n] // 10)) for n, c in sen.items())
    again = choose_channels(model, layers, "sen", 10, x, y, 0.1, 2, None, gen(0))
    assert all(torch.equal(sen[n], again[n]) for n in sen)  # seeded PGD: same sets
    r1 = choose_channels(model, layers, "rand", 25, x, y, 0.1, 2, None, gen(1))
    r2 = choose_channels(model, layers, "rand", 25, x, y, 0.1, 2, None, gen(2))
    assert any(not torch.equal(r1[n], r2[n]) for n in r1)
    with pytest.raises(ValueError, match="SNS variant"):
        choose_channels(model, layers, "best", 10, x, y, 0.1, 2, None, gen(0))
    with pytest.raises(ValueError, match="not layers of vgg16"):
        selected_layers(model, "vgg16", ["conv14"])


def test_freezing_keeps_the_lower_layers_and_their_statistics():
    model = tiny_model("resnet18")
    frozen_bn = freeze_below(model, "l3b2c1")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("conv1", "bn1", "layer1", "layer2")) for n in trainable)
    assert any("layer3" in n for n in trainable) and any(n.startswith("fc") for n in trainable)
    assert model.bn1 in frozen_bn and len(frozen_bn) > 0


def test_sns_fine_tuning_changes_only_the_top_layers(splits, base, tmp_path):
    cfg = TrainConfig(method="sns", base="vanilla", variant="sen", epochs=1, batch_size=32, eps=16, steps=2,
                      select_images=32, lr=0.01)
    _train(splits, tmp_path, cfg, base_path=base)
    before, _ = checkpoint.load_model(base)
    after, _ = checkpoint.load_model(tmp_path / "model.pt")
    b, a = before.state_dict(), after.state_dict()
    lower = [k for k in b if k.split(".")[0] == "features" and any(k.split(".")[1] == f"{p}{i}" for p in ("conv", "bn") for i in range(1, 8))]
    assert lower and all(torch.equal(b[k], a[k]) for k in lower)  # weights and BN statistics untouched
    assert not torch.equal(b["features.conv13.weight"], a["features.conv13.weight"])
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["sns_lambda"] == 5.0 and meta["sns_layers"][0] == "conv8"
    assert len(meta["stabilised_channels"]["conv13"]) == -(-after.layers()["conv13"].out_channels // 10)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics.train_sns_loss.gt(0).all()


def test_sns_dyn_resumes_to_the_same_weights(splits, base, tmp_path):
    cfg = TrainConfig(method="sns", base="vanilla", variant="dyn", epochs=2, batch_size=32, eps=16, steps=1,
                      dyn_images=16, lr=0.01)
    _train(splits, tmp_path / "straight", cfg, base_path=base)
    assert _train(splits, tmp_path / "killed", cfg, base_path=base, stop_after_epoch=1) == {"stopped_after_epoch": 1}
    _train(splits, tmp_path / "killed", cfg, base_path=base)
    a, _ = checkpoint.load_model(tmp_path / "straight" / "model.pt")
    b, _ = checkpoint.load_model(tmp_path / "killed" / "model.pt")
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_sns_needs_a_matching_base(splits, base, tmp_path):
    cfg = TrainConfig(method="sns", base="vanilla", epochs=1, batch_size=32)
    with pytest.raises(ValueError, match="base checkpoint"):
        _train(splits, tmp_path, cfg)
    with pytest.raises(ValueError, match="base checkpoint"):
        _train(splits, tmp_path, TrainConfig(method="pat", epochs=1), base_path=base)
    with pytest.raises(ValueError, match="not a resnet18"):
        train_model(splits / "train.npz", None, "resnet18", "digits", 0.0625, cfg, 3, tmp_path / "m.pt",
                    tmp_path / "m.csv", tmp_path / "m.json", tmp_path / "r.pt", base_path=base)
    with pytest.raises(ValueError, match="needs `base`"):
        TrainConfig(method="sns", epochs=1)


def test_alp_adds_the_logit_pairing_term(splits, tmp_path):
    # same seed, same examples: ALP's loss exceeds PAT's by alp_weight x the logit distance, so with
    # alp_weight 0 the two trainings are identical and with 0.5 they are not
    pat = TrainConfig(method="pat", epochs=1, batch_size=32, eps=16, steps=2)
    _train(splits, tmp_path / "pat", pat)
    _train(splits, tmp_path / "alp0", TrainConfig(method="alp", alp_weight=0.0, epochs=1, batch_size=32, eps=16, steps=2))
    _train(splits, tmp_path / "alp", TrainConfig(method="alp", epochs=1, batch_size=32, eps=16, steps=2))
    p, _ = checkpoint.load_model(tmp_path / "pat" / "model.pt")
    z, _ = checkpoint.load_model(tmp_path / "alp0" / "model.pt")
    a, _ = checkpoint.load_model(tmp_path / "alp" / "model.pt")
    assert all(torch.equal(p.state_dict()[k], z.state_dict()[k]) for k in p.state_dict())
    assert not all(torch.equal(p.state_dict()[k], a.state_dict()[k]) for k in p.state_dict())
    pat_loss = pd.read_csv(tmp_path / "pat" / "metrics.csv").train_loss.iloc[0]
    alp_loss = pd.read_csv(tmp_path / "alp" / "metrics.csv").train_loss.iloc[0]
    assert alp_loss > pat_loss


def test_nat_examples_are_step_ll_with_per_image_budgets():
    torch.manual_seed(0)
    model = tiny_model("vgg16").eval()
    x = torch.rand(64, 3, 32, 32) * 0.5 + 0.25  # away from the box so clipping does not hide the step
    eps = 32 / 255
    adv = nat_examples(model, x, eps, torch.Generator().manual_seed(0))
    step = (adv - x).abs().flatten(1).max(1).values
    assert (step <= eps + 1e-6).all() and step.std() > 0.01  # budgets differ per image
    moved = (adv - x).abs().flatten(1)
    assert ((moved - step[:, None]).abs() < 1e-5).float().mean() > 0.99  # one signed step of that size per pixel


def test_eat_takes_its_examples_in_turn_from_the_model_and_the_static_models(splits, base, tmp_path, monkeypatch):
    import advneurons.training.loop as training

    sources = []
    original = training.nat_examples

    def spy(model, x, eps, gen):
        sources.append(model)
        return original(model, x, eps, gen)

    monkeypatch.setattr(training, "nat_examples", spy)
    before = checkpoint.safe_load(base)["state_dict"]
    cfg = TrainConfig(method="eat", static=["vanilla"], epochs=1, batch_size=32, eps=16)
    meta = _train(splits, tmp_path / "eat", cfg, static_paths=[base, base])
    assert len(sources) == 3  # 96 images in batches of 32: the model, static 1, static 2
    assert sources[0].training and not hasattr(sources[0], "arch_name")  # the model in training
    assert all(getattr(m, "arch_name", None) == "vgg16" for m in sources[1:])
    assert all(not p.requires_grad for m in sources[1:] for p in m.parameters())
    after = checkpoint.safe_load(base)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the static models never change
    assert [m["arch"] for m in meta["static_models"]] == ["vgg16", "vgg16"]
    _train(splits, tmp_path / "nat", TrainConfig(method="nat", epochs=1, batch_size=32, eps=16))
    eat, _ = checkpoint.load_model(tmp_path / "eat" / "model.pt")
    nat, _ = checkpoint.load_model(tmp_path / "nat" / "model.pt")
    assert not all(torch.equal(eat.state_dict()[k], nat.state_dict()[k]) for k in eat.state_dict())


def test_eat_needs_static_models_and_only_eat_takes_them(splits, base, tmp_path):
    with pytest.raises(ValueError, match="needs `static`"):
        TrainConfig(method="eat", epochs=1)
    with pytest.raises(ValueError, match="EAT setting"):
        TrainConfig(method="nat", static=["vanilla"])
    with pytest.raises(ValueError, match="static source checkpoints"):
        _train(splits, tmp_path, TrainConfig(method="eat", static=["vanilla"], epochs=1))
    with pytest.raises(ValueError, match="static source checkpoints"):
        _train(splits, tmp_path, TrainConfig(method="nat", epochs=1), static_paths=[base])
    assert TrainConfig(method="eat", static=["vanilla"]).static == ("vanilla",)


def test_final_table_lays_out_every_model_with_group_means(tmp_path):
    from advneurons.defenses.tables import final_robustness_table

    from advneurons.evaluation.robustness import accuracy_record, records_frame

    models, paths = {}, []
    attacks = {"pgd": {"type": "pgd", "eps": 32, "steps": 10}, "fgsm": {"type": "fgsm", "eps": 32}}
    for arch in ("vgg16", "resnet18"):
        for training, acc in (("vanilla", 0.1), ("pat", 0.7), ("sns_rand_0", 0.5), ("sns_rand_1", 0.6)):
            label = f"{arch}-{training}"
            group = f"{arch}-rand" if "rand" in training else label
            models[label] = {"arch": arch, "training": training, "method": "x", "group": group}
            records = [accuracy_record(label, "clean", None, 20, 0.99)]
            records += [accuracy_record(label, name, cfg, 20, acc - (0.05 if name == "pgd" else 0.02))
                        for name, cfg in attacks.items()]
            path = tmp_path / f"{label}.csv"
            records_frame(records).to_csv(path, index=False)
            paths.append(path)
    final = final_robustness_table(paths, {"L-inf PGD": "pgd", "FGSM": "fgsm"}, "digits", models,
                                   tmp_path / "f.csv", tmp_path / "f.md", tmp_path / "f.tex", tmp_path / "s.csv")
    assert list(final.arch.unique()) == ["vgg16", "resnet18"]
    mean = final[final.model == "vgg16-rand (mean of 2)"].iloc[0]
    assert mean["L-inf PGD"] == pytest.approx(np.mean([45, 55]))
    std = final[final.model == "vgg16-rand (std)"].iloc[0]
    assert std["L-inf PGD"] == pytest.approx(np.std([45, 55], ddof=1), abs=0.01)
    tex = (tmp_path / "f.tex").read_text()
    assert r"\begin{tabular}" in tex and "vgg16-pat" in tex and "65.00" in tex
    assert "## resnet18" in (tmp_path / "f.md").read_text()
    with pytest.raises(ValueError, match="not described"):
        final_robustness_table(paths, {"L-inf PGD": "pgd"}, "digits", {"vgg16-pat": models["vgg16-pat"]},
                               tmp_path / "g.csv", tmp_path / "g.md", tmp_path / "g.tex", tmp_path / "t.csv")


def test_final_table_leaves_declared_cells_empty_and_refuses_undeclared_gaps(tmp_path):
    from advneurons.defenses.tables import final_robustness_table
    from advneurons.evaluation.robustness import TableError, accuracy_record, records_frame

    pgd, fgsm = {"type": "pgd", "eps": 32, "steps": 10}, {"type": "fgsm", "eps": 32}
    full = records_frame([accuracy_record("vgg16-pat", "clean", None, 20, 0.9),
                          accuracy_record("vgg16-pat", "pgd", pgd, 20, 0.6),
                          accuracy_record("vgg16-pat", "fgsm", fgsm, 20, 0.7)])
    partial = records_frame([accuracy_record("vgg16-pat_igdefense", "clean", None, 20, 0.88),
                             accuracy_record("vgg16-pat_igdefense", "pgd", pgd, 20, 0.65)])
    full.to_csv(tmp_path / "a.csv", index=False)
    partial.to_csv(tmp_path / "b.csv", index=False)
    models = {"vgg16-pat": {"arch": "vgg16", "training": "pat", "method": "pat"},
              "vgg16-pat_igdefense": {"arch": "vgg16", "training": "pat_igdefense", "method": "ig_defense",
                                      "not_run": ["FGSM"]}}
    out = [tmp_path / n for n in ("f.csv", "f.md", "f.tex", "s.csv")]
    final = final_robustness_table([tmp_path / "a.csv", tmp_path / "b.csv"], {"L-inf PGD": "pgd", "FGSM": "fgsm"},
                                   "digits", models, *out)
    row = final.set_index("model").loc["vgg16-pat_igdefense"]
    assert row["L-inf PGD"] == 65.0 and pd.isna(row["FGSM"])
    assert "| —" in (tmp_path / "f.md").read_text() or "—" in (tmp_path / "f.md").read_text()
    del models["vgg16-pat_igdefense"]["not_run"]
    with pytest.raises(TableError, match="no record"):
        final_robustness_table([tmp_path / "a.csv", tmp_path / "b.csv"], {"L-inf PGD": "pgd", "FGSM": "fgsm"},
                               "digits", models, *out)


def test_final_table_ranks_no_partial_suite_worst_case_and_prints_intervals_with_n(tmp_path):
    """With per-image records: the full-suite rows' worst case is in the CSV; the row evaluated under part of the
    suite (IG-Defense: PGD only) is empty there, marked ‡ in Markdown with the attacks it covers; Markdown cells
    read "accuracy [low, high]" and the headers carry n."""
    from advneurons.defenses.tables import final_robustness_table
    from advneurons.evaluation.robustness import (PARTIAL_MARK, WORST_CASE, ImageResults, accuracy_record, image_frame,
                                                  record_sidecars, records_frame)

    pgd, fgsm = {"type": "pgd", "eps": 32, "steps": 10}, {"type": "fgsm", "eps": 32}
    n, index = 20, np.arange(20)
    clean = torch.arange(n) < 18
    outcomes = {"vgg16-pat": {"pgd": torch.arange(n) < 12, "fgsm": torch.arange(n) % 2 == 0},
                "vgg16-pat_igdefense": {"pgd": torch.arange(n) < 15}}
    paths = []
    for model, attacks in outcomes.items():
        rows = [accuracy_record(model, "clean", None, n, 0.9, clean)]
        rows += [accuracy_record(model, a, {"pgd": pgd, "fgsm": fgsm}[a], n, float(c.float().mean()), c)
                 for a, c in attacks.items()]
        path = tmp_path / f"{model}.csv"
        records_frame(rows).to_csv(path, index=False)
        zeros = torch.zeros(n)
        pd.concat([image_frame(model, a, index, clean, ImageResults(c, zeros, zeros, torch.full((n,), -1)))
                   for a, c in attacks.items()]).to_csv(record_sidecars(path)[0], index=False)
        paths.append(path)
    models = {"vgg16-pat": {"arch": "vgg16", "training": "pat", "method": "pat"},
              "vgg16-pat_igdefense": {"arch": "vgg16", "training": "pat_igdefense", "method": "ig_defense",
                                      "not_run": ["FGSM"]}}
    out = [tmp_path / f for f in ("f.csv", "f.md", "f.tex", "s.csv")]
    final = final_robustness_table(paths, {"L-inf PGD": "pgd", "FGSM": "fgsm"}, "digits", models, *out).set_index("model")
    # vgg16-pat: robust = correct clean (first 18) and even and < 12: 0, 2, .., 10 -> 6 of 20
    assert final.loc["vgg16-pat", WORST_CASE] == 30.0 and pd.isna(final.loc["vgg16-pat_igdefense", WORST_CASE])
    settings = pd.read_csv(out[3]).set_index(["model", "column"])
    partial = settings.loc[("vgg16-pat_igdefense", WORST_CASE)]
    assert partial.partial_suite and partial.accuracy_pct == 75.0 and "not evaluated under FGSM" in partial.description
    md = out[1].read_text()
    assert "| 30.00 [14.6, 51.9] " in md and f"| 75.00 [53.1, 88.8] (n=20) {PARTIAL_MARK} " in md
    assert f"{PARTIAL_MARK} vgg16-pat_igdefense: robust only if correct clean and every attack failed: L-inf PGD" in md
    assert f"{WORST_CASE}: robust only if correct clean and every attack failed: L-inf PGD, FGSM, on the 20 images" in md
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert all(f"{c} (n=20)" in header for c in ("Clean", "L-inf PGD", "FGSM", WORST_CASE)) and "±" not in md
    assert "—" in md  # the IG-Defense FGSM cell, not evaluated


TRAININGS = {
    "vanilla": {"method": "vanilla"}, "pat": {"method": "pat"}, "alp": {"method": "alp"},
    "nat": {"method": "nat"}, "eat": {"method": "eat"},
    **{f"sns_{v}": {"method": "sns", "variant": v} for v in ("sen", "all", "dyn", "cls")},
    **{f"sns_rand_{i}": {"method": "sns", "variant": "rand", "repeat": i} for i in range(3)},
}


def test_defense_claims_take_the_papers_signs_and_decide_with_paired_tests(tmp_path):
    from advneurons.defenses.tables import defense_claims
    from claim_helpers import write_claim_inputs

    columns = ["L-inf PGD", "FGSM", "AutoAttack"]
    rows = [
        ["vgg16", "vgg16-vanilla", "vanilla", "vanilla", 99.0, 1.0, 20.0, 0.0],
        ["vgg16", "vgg16-pat", "pat", "pat", 98.0, 70.0, 80.0, 60.0],
        ["vgg16", "vgg16-alp", "alp", "alp", 97.0, 80.0, 85.0, 70.0],
        ["vgg16", "vgg16-nat", "nat", "nat", 97.0, 20.0, 60.0, 10.0],
        ["vgg16", "vgg16-sns_sen", "sns_sen", "sns", 98.5, 80.0, 85.0, 70.0],
        ["vgg16", "vgg16-sns_all", "sns_all", "sns", 98.5, 79.75, 85.0, 70.0],  # one image of 400 in one column
        *[["vgg16", f"vgg16-sns_rand_{i}", f"sns_rand_{i}", "sns", 98.0, 60.0 + i, 70.0, 50.0] for i in range(3)],
        ["vgg16", "vgg16-sns_dyn", "sns_dyn", "sns", 98.5, 80.0, 85.0, 70.0],
        ["vgg16", "vgg16-sns_cls", "sns_cls", "sns", 98.0, 40.0, 70.0, 30.0],
        ["vgg16", "vgg16-pat_meansparse", "pat_meansparse", "meansparse", 97.5, 74.0, 80.0, 55.0],
        ["vgg16", "vgg16-pat_igdefense", "pat_igdefense", "ig_defense", 97.0, 70.25, None, 62.0],
    ]
    files = write_claim_inputs(tmp_path, rows, columns, n=400)
    # per-channel sensitivities of the fine-tuned layers (sensitivity_by_training's table): sns_sen below vanilla
    # in every channel, and below pat in 10 of 16 channels only (within noise for the signed-rank test)
    rng = np.random.default_rng(0)
    channels = 8
    base = rng.uniform(0.5, 1.0, size=2 * channels)
    sens = pd.DataFrame([
        {"training": t, "depth": d, "layer": layer, "channel": c, "sensitivity": value}
        for t, values in (("vanilla", 3 * base), ("pat", base),
                          ("sns_sen", base + np.where(np.arange(2 * channels) < 10, -0.01, 0.012)))
        for i, (layer, d, c) in enumerate((lay, dep, ch) for lay, dep in (("conv8", 7), ("conv13", 12))
                                          for ch in range(channels))
        for value in [values[i]]
    ])
    sens.to_csv(tmp_path / "sens.csv", index=False)
    (section,) = defense_claims(files["final"], {"vgg16": tmp_path / "sens.csv"}, files["records"],
                                files["settings"], TRAININGS)
    verdicts = {c.text.split(":")[0].split(" (vgg16")[0]: c.verdict for c in section.claims}
    suite = " over the attack suite"
    assert verdicts["SNS-sen beats PAT"] == "supported"
    assert verdicts["SNS-sen beats ALP"] == "within noise"  # identical results
    assert verdicts["SNS-sen beats SNS-all"] == "within noise"  # one image of 400 in one column
    assert verdicts["SNS-sen beats the mean of SNS-rand"] == "supported"
    assert verdicts['SNS-rand is worse than PAT ("behaves even worse than the original PAT model")'] == "supported"
    assert verdicts["SNS-dyn is about as robust as SNS-sen"] == "supported"  # identical, interval within 2 points
    assert verdicts["SNS-cls beats NAT"] == "supported" and verdicts["SNS-cls stays below PAT"] == "supported"
    assert "SNS-cls beats EAT" not in verdicts  # no EAT model in this table
    assert verdicts["PAT is at least as robust as ALP"] == "contradicted"
    # MeanSparse: white-box gain of 16 of 400 images, one way, but AutoAttack significantly lower
    assert verdicts["MeanSparse raises the robustness of pat"] == MASKING
    assert verdicts["IG-Defense raises the robustness of pat"] == "within noise"  # white-box gain: one image
    ig = next(c for c in section.claims if c.text.startswith("IG-Defense raises"))
    assert ig.extension  # IG-Defense's paper uses ResNets, not VGG16
    assert not next(c for c in section.claims if c.text.startswith("MeanSparse raises")).extension
    assert verdicts["sns_sen has lower neuron sensitivity than vanilla in the fine-tuned layers"] == "supported"
    assert verdicts["sns_sen has lower neuron sensitivity than pat in the fine-tuned layers"] == "within noise"
    sens_claim = next(c for c in section.claims if c.text.startswith("sns_sen has lower neuron sensitivity than v"))
    assert "Wilcoxon signed-rank over 16 channels" in sens_claim.evidence and "Wilcoxon" in sens_claim.rule
    rand = next(c for c in section.claims if c.text.startswith("SNS-rand is worse"))
    assert "vgg16-sns_rand_0 + vgg16-sns_rand_1 + vgg16-sns_rand_2 vs vgg16-pat" + suite in rand.text
    # repeats are averaged per image and tested over the 400 images, never counted as 1200 images
    assert "of 400 images (A averaged over its 3 repeats)" in rand.evidence and "sign test" in rand.rule
    sen_pat = next(c for c in section.claims if c.text.startswith("SNS-sen beats PAT"))
    assert all(f"{col}: " in sen_pat.evidence for col in columns) and "3 of 3 attack columns" in sen_pat.evidence
    assert "Holm" in sen_pat.rule and "pooled" not in sen_pat.evidence
    assert all(c.rule for c in section.claims)  # every verdict states its rule
    assert "Bonferroni" in next(c for c in section.claims if c.text.startswith("PAT is at least")).rule


def test_the_defense_rule_reads_gradient_masking_and_missing_evidence(tmp_path):
    """One rule for every post-training defense: supported needs the white-box, transfer and AutoAttack gains."""
    from advneurons.defenses.tables import defense_claims
    from claim_helpers import write_claim_inputs, write_transfer

    n = 400
    columns = ["L-inf PGD", "AutoAttack"]
    rows = [
        ["resnet18", "r-pat", "pat", "pat", 98.0, 70.0, 60.0],
        ["resnet18", "r-ms", "pat_meansparse", "meansparse", 97.0, 80.0, 70.0],  # every gain holds
        ["resnet18", "r-ig", "pat_igdefense", "ig_defense", 97.0, 80.0, 61.0],  # AutoAttack: 4 images
    ]
    files = write_claim_inputs(tmp_path, rows, columns, n)
    transfer = write_transfer(tmp_path, [("r-ms", 0.80, 0.78), ("r-ig", 0.80, 0.75)], n, base="r-pat")
    (section,) = defense_claims(files["final"], {}, files["records"], files["settings"], {}, transfer_csv=transfer)
    claims = {c.text.split(" raises")[0]: c for c in section.claims}
    assert claims["MeanSparse"].verdict == "supported"
    assert claims["IG-Defense"].verdict == MASKING  # transfer holds, AutoAttack does not
    assert not claims["IG-Defense"].extension  # resnet18: the architecture of IG-Defense's paper
    assert "survives the adversarial examples transferred from r-pat" in claims["MeanSparse"].text
    assert "transfer gain: supported" in claims["MeanSparse"].evidence
    assert "AutoAttack gain: within noise" in claims["IG-Defense"].evidence
    # the gain vanishes under the transferred examples: masking, whatever AutoAttack says
    transfer = write_transfer(tmp_path, [("r-ms", 0.80, 0.70), ("r-ig", 0.80, 0.75)], n, base="r-pat")
    (section,) = defense_claims(files["final"], {}, files["records"], files["settings"], {}, transfer_csv=transfer)
    assert next(c for c in section.claims if c.text.startswith("MeanSparse")).verdict == MASKING
    # no transfer check in this config: a white-box and AutoAttack gain is not enough to call it supported
    (section,) = defense_claims(files["final"], {}, files["records"], files["settings"], {})
    ms = next(c for c in section.claims if c.text.startswith("MeanSparse"))
    assert ms.verdict == "not checked" and "missing evidence: transfer" in ms.evidence
    assert "transfer gain: no evidence in this config" in ms.evidence


def test_stability_loss_ignores_forward_passes_outside_the_training_step():
    # the attack's own forward passes (odd batch sizes included) must neither fail nor add to L_sns
    torch.manual_seed(0)
    model = tiny_model("vgg16").eval()
    layers = selected_layers(model, "vgg16", None)
    channels = {n: torch.tensor([0]) for n in layers}
    with StabilityLoss(layers, channels) as stab, torch.no_grad():
        model(torch.rand(5, 3, 32, 32))
        assert stab.value is None
        x = torch.rand(3, 3, 32, 32)
        _, _, _, l_sns = sns_batch_loss(model, stab, x, torch.zeros(3, dtype=torch.long), x, 1.0, "sen")
    assert l_sns.item() == 0.0  # identical clean and adversarial halves


def test_the_stabilised_features_are_the_batch_normalised_conv_outputs_by_default():
    for arch, first in (("vgg16", "conv8"), ("resnet18", "l3b2c1")):
        model = tiny_model(arch)
        layers = selected_layers(model, arch, None)
        assert all(isinstance(m, torch.nn.BatchNorm2d) for m in layers.values())
        assert layers[first].num_features == layer_channels(model)[first]
    vgg = tiny_model("vgg16")
    assert selected_layers(vgg, "vgg16", ["conv8"])["conv8"] is vgg.features.bn8
    res = tiny_model("resnet18")
    block = dict(res.blocks())["l4b2"]
    assert selected_layers(res, "resnet18", ["l4b2c2"])["l4b2c2"] is block.bn2


def test_a_defense_gain_the_attack_itself_flags_is_not_counted(tmp_path):
    """AutoAttack's gradient-masking warning on the defended model's cell: a gain it measures is not shown."""
    import json

    from advneurons.defenses.tables import defense_claims
    from claim_helpers import write_claim_inputs, write_transfer

    columns = ["L-inf PGD", "AutoAttack"]
    rows = [
        ["vgg16", "vgg16-pat", "pat", "pat", 98.0, 70.0, 60.0],
        ["vgg16", "vgg16-pat_igdefense", "pat_igdefense", "ig_defense", 97.0, 80.0, 70.0],
    ]
    files = write_claim_inputs(tmp_path, rows, columns, n=400)
    records = pd.read_csv(files["records"][0])
    warned = (records.model == "vgg16-pat_igdefense") & (records.attack == "autoattack")
    message = "Square Attack has decreased the robust accuracy of 8.00%."
    records["attack_log"] = records["attack_log"].astype(object)
    records.loc[warned, "attack_log"] = json.dumps({"warnings": [message]})
    records.to_csv(files["records"][0], index=False)
    transfer = write_transfer(tmp_path, [("vgg16-pat_igdefense", 0.80, 0.80)], 400)
    (section,) = defense_claims(files["final"], {}, files["records"], files["settings"], TRAININGS,
                                transfer_csv=transfer)
    claim = next(c for c in section.claims if c.text.startswith("IG-Defense raises the robustness of pat"))
    assert claim.verdict == "not checked"  # white-box, transfer and AutoAttack gains would read "supported"
    assert "not counted" in claim.evidence and message in claim.evidence and "exact McNemar" in claim.rule


def test_sensitivity_by_training_keeps_the_channels_the_findings_test(tmp_path):
    from advneurons.defenses.tables import sensitivity_by_training, sensitivity_claim

    paths = {}
    for training, scale in (("pat", 1.0), ("sns_sen", 0.5)):
        table = pd.DataFrame({"layer": ["conv8"] * 6 + ["conv13"] * 6, "depth": [7] * 6 + [12] * 6,
                              "channel": list(range(6)) * 2, "sensitivity": scale * np.linspace(0.1, 1.2, 12)})
        paths[training] = tmp_path / f"{training}.csv"
        table.to_csv(paths[training], index=False)
    out = sensitivity_by_training(paths, "vgg16", tmp_path / "by_training.csv", tmp_path / "by_training.png")
    assert len(out) == 24 and list(out.columns) == ["training", "depth", "layer", "channel", "sensitivity"]
    # the figure's per-layer means are the channel means
    assert out.groupby(["training", "layer"]).sensitivity.mean()["pat", "conv8"] == pytest.approx(
        np.linspace(0.1, 1.2, 12)[:6].mean())
    claim = sensitivity_claim(pd.read_csv(tmp_path / "by_training.csv"), "sns_sen", "pat", ["conv8", "conv13"])
    # every one of the 12 channels lower: exact Wilcoxon one-sided p = 1/4096
    assert claim.verdict == "supported" and "p=0.00024" in claim.evidence
    assert "paired by layer and channel index" in claim.rule
