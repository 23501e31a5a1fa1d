"""The GPU-ready hot paths (data held on the device, vectorised augmentation, device-side running totals,
opt-in bf16 autocast) leave fp32 results on the CPU exactly as a plain loop in the same layout computes them;
the channels_last layout itself (used on the CPU too, for speed) changes them only by float rounding."""

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from advneurons import runtime
from advneurons.attacks import AttackSpec, from_255, pgd_linf, run_attack
from advneurons.config import settings
from advneurons.evaluation.robustness import attack_generator, robust_correct
from advneurons.models import checkpoint
from advneurons.models.inference import FoldedShadow, fold_batchnorm
from advneurons.training.loop import TrainConfig, _train_epoch, augment
from tiny_models import tiny_model
from training_helpers import train_tiny, write_small_splits

ROOT = Path(__file__).resolve().parents[2]


def _augment_by_loop(x, kind, gen, pad=4):
    """The per-image reference: crop each padded image at its own offset, then flip half of them."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if kind == "crop_flip":
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


@pytest.mark.parametrize("kind", ["crop", "crop_flip"])
def test_vectorised_augmentation_equals_the_per_image_loop(kind):
    x = torch.rand(37, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    gen_a, gen_b = runtime.generator(5), runtime.generator(5)
    assert torch.equal(augment(x, kind, gen_a), _augment_by_loop(x, kind, gen_b))
    assert torch.equal(gen_a.get_state(), gen_b.get_state())  # the same draws, so the next batch is the same too


def _folded_copy(model):
    """A fresh folded, frozen copy of the model as it is now: what FoldedShadow.sync() must equal bit for bit."""
    shadow = copy.deepcopy(model).eval().requires_grad_(False)
    fold_batchnorm(shadow)
    return runtime.fast_layout(shadow)


def _epoch_by_loop(model, optimizer, scheduler, cfg, x, y, gen, layout=None):
    """One PAT / vanilla epoch as a plain host loop: per-image augmentation, .item() after every batch, PGD
    crafted on a fresh folded copy of the model; `layout` puts each batch in the layout the model runs in (by
    default the one runtime.fast_layout gave it)."""
    layout = layout or (lambda t: runtime.fast_batch(t, model))
    model.train()
    order = torch.randperm(len(x), generator=gen)
    loss_sum, correct, adv_correct, seen = 0.0, 0, 0, 0
    for start in range(0, len(x), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        xb, yb = layout(_augment_by_loop(x[idx], cfg.augmentation, gen)), y[idx]
        if cfg.method == "pat":
            x_adv = pgd_linf(_folded_copy(model), xb, yb, from_255(cfg.eps), cfg.steps, None, cfg.random_start,
                             generator=gen)
            logits = model(torch.cat([xb, x_adv]))
            clean, adv = logits[: len(xb)], logits[len(xb) :]
            loss = 0.5 * F.cross_entropy(clean, yb) + 0.5 * F.cross_entropy(adv, yb)
            adv_correct += (adv.argmax(1) == yb).sum().item()
        else:
            clean = model(xb)
            loss = F.cross_entropy(clean, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(xb)
        correct += (clean.argmax(1) == yb).sum().item()
        seen += len(xb)
    out = {"train_loss": loss_sum / seen, "train_clean_acc": correct / seen}
    if cfg.method != "vanilla":
        out["train_adv_acc"] = adv_correct / seen
    return out


def _fresh(seed=0):
    torch.manual_seed(seed)
    model = tiny_model("vgg16")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=10)
    return model, optimizer, scheduler


@pytest.mark.parametrize("method", ["vanilla", "pat"])
def test_training_epoch_in_fp32_equals_the_plain_loop_bit_for_bit(method):
    cfg = TrainConfig(method=method, batch_size=16, augmentation="crop_flip", eps=32, steps=2)
    x = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(2))
    model_a, opt_a, sched_a = _fresh()
    model_b, opt_b, sched_b = _fresh()
    runtime.fast_layout(model_a), runtime.fast_layout(model_b)  # as train() lays out its model
    crafter = FoldedShadow.of(model_a) if method == "pat" else None  # as train() makes it
    metrics_a = _train_epoch(model_a, opt_a, sched_a, cfg, x, y, runtime.generator(9), crafter=crafter)
    metrics_b = _epoch_by_loop(model_b, opt_b, sched_b, cfg, x, y, runtime.generator(9))
    assert metrics_a == metrics_b
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("arch", ["vgg16", "resnet18"])
def test_the_folded_shadow_follows_the_model_through_training_steps(arch):
    """After optimizer steps in training mode (weights and BatchNorm statistics move), sync() gives bit for bit
    a fresh fold of the model, and in float64 the model's eval-mode function and input gradients."""
    torch.manual_seed(0)
    model = tiny_model(arch).double()
    shadow = FoldedShadow.of(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(16, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=gen)
    for _ in range(3):
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        folded = shadow.sync()
        fresh = _folded_copy(model)
        for (name, a), b in zip(folded.state_dict().items(), fresh.state_dict().values()):
            assert torch.equal(a, b), name
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-10)
        gen_a, gen_b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        assert torch.equal(pgd_linf(folded, x, y, 8 / 255, 3, None, True, generator=gen_a),
                           pgd_linf(model, x, y, 8 / 255, 3, None, True, generator=gen_b))
    assert all(p.requires_grad for p in model.parameters())  # the model itself is never touched
    assert not any(p.requires_grad for p in shadow.shadow.parameters())


def test_channels_last_changes_a_training_epoch_only_by_float_rounding():
    # vanilla: PGD's sign() would turn a rounding difference in a near-zero gradient into a different example
    cfg = TrainConfig(method="vanilla", batch_size=16, augmentation="crop_flip", eps=32, steps=2)
    x = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(2))
    model_a, opt_a, sched_a = _fresh()
    model_b, opt_b, sched_b = _fresh()
    runtime.fast_layout(model_a)
    assert model_a.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    metrics_a = _train_epoch(model_a, opt_a, sched_a, cfg, x, y, runtime.generator(9))
    metrics_b = _epoch_by_loop(model_b, opt_b, sched_b, cfg, x, y, runtime.generator(9), layout=lambda t: t)
    assert metrics_a["train_loss"] == pytest.approx(metrics_b["train_loss"], rel=1e-5)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), name


def test_cpu_models_with_a_convolution_onednn_crashes_on_keep_the_contiguous_layout():
    """ResNet18 below width 1/8 has 1x1 stride-2 shortcut convolutions with fewer than 8 input channels, whose
    weight gradient in channels_last kills the process on AVX2 CPUs (CI's segfault of 2026-12-04 in the quick
    preset's ALP training): such a model and its batches stay contiguous on the CPU, every other goes channels_last."""
    from advneurons.models.architectures import build_model

    narrow = build_model("resnet18", "digits", width=1 / 16)
    assert runtime.channels_last_hazard(narrow) == "layer2.0.shortcut.conv"
    assert runtime.fast_layout(narrow) is narrow and not runtime.runs_channels_last(narrow)
    assert narrow.conv1.weight.is_contiguous() and not narrow.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 32, 32)
    assert runtime.fast_batch(x, narrow) is x
    for arch, width in (("resnet18", 1 / 8), ("resnet18", 1.0), ("vgg16", 1 / 16)):
        model = build_model(arch, "digits", width=width)
        assert runtime.channels_last_hazard(model) is None and runtime.runs_channels_last(model), (arch, width)
        assert runtime.fast_batch(x, model).is_contiguous(memory_format=torch.channels_last)


def test_a_training_step_of_a_narrow_resnet18_runs_on_the_cpu():
    """The step that crashed, in a process of its own (a crash there fails this test instead of the suite):
    the layout train() gives a ResNet18 at width 1/16, a PGD training batch through _train_epoch, 1 and 2
    threads (2 threads hung where 1 crashed)."""
    import subprocess
    import sys

    for threads in (1, 2):
        code = ("import faulthandler, torch; faulthandler.enable()\n"
                "from advneurons import runtime\n"
                "from advneurons.models.architectures import build_model\n"
                "from advneurons.training.loop import TrainConfig, _train_epoch\n"
                f"runtime.setup({threads}, 0)\n"
                "model = runtime.fast_layout(build_model('resnet18', 'digits', width=1 / 16))\n"
                "opt = torch.optim.SGD(model.parameters(), lr=0.01)\n"
                "sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)\n"
                "cfg = TrainConfig(method='pat', batch_size=64, augmentation='crop_flip', eps=32, steps=1)\n"
                "x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))\n"
                "print(_train_epoch(model, opt, sched, cfg, x, y, runtime.generator(1))['train_loss'] > 0)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip() == "True", (threads, proc.returncode, proc.stderr[-3000:])


def test_bf16_training_is_opt_in_and_gets_its_own_model_ids(tmp_path):
    splits = write_small_splits(tmp_path / "splits", n=48)
    fp32 = train_tiny(splits, tmp_path / "fp32", TrainConfig(method="pat", epochs=1, batch_size=16, eps=32, steps=2))
    bf16 = train_tiny(splits, tmp_path / "bf16",
                      TrainConfig(method="pat", epochs=1, batch_size=16, eps=32, steps=2, precision="bf16"))
    assert fp32["params"]["training"]["precision"] == "fp32" and bf16["params"]["training"]["precision"] == "bf16"
    a = checkpoint.load_model(tmp_path / "fp32" / "model.pt")[0].state_dict()
    b = checkpoint.load_model(tmp_path / "bf16" / "model.pt")[0].state_dict()
    assert all(torch.isfinite(v.float()).all() for v in b.values())
    assert any(not torch.equal(a[k], b[k]) for k in a)  # autocast did run in bfloat16
    assert math.isfinite(bf16["final"]["train_loss"])
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    # fp32 (the default) leaves every id as it was; bf16 changes the models' and the evaluations' ids
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    base = settings.validate_config(copy.deepcopy(config))
    half = settings.validate_config({**copy.deepcopy(config), "precision": "bf16"})
    assert base["precision"] == "fp32"
    assert settings._model_params(base, "vgg16", "vanilla")["training"] == base["training"]["vanilla"]
    assert settings._model_params(half, "vgg16", "vanilla")["training"]["precision"] == "bf16"
    assert set(settings.model_entries(base)).isdisjoint(settings.model_entries(half))
    assert set(settings.robustness_entries(base)).isdisjoint(settings.robustness_entries(half))


def test_attack_evaluation_in_fp32_equals_running_the_attack_and_bf16_runs_on_cpu():
    torch.manual_seed(0)
    model = tiny_model("vgg16").eval()
    x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)  # every image starts correct
    spec = AttackSpec.from_config({"type": "pgd", "eps": 8, "steps": 3})
    correct = robust_correct(model, x, y, spec, batch_size=5, generator=attack_generator(0))
    gen = attack_generator(0)
    by_hand = torch.cat([model(run_attack(spec, model, x[i : i + 5], y[i : i + 5], generator=gen)).argmax(1) == y[i : i + 5]
                         for i in range(0, 12, 5)])
    assert torch.equal(correct, by_hand)
    half = robust_correct(model, x, y, spec, batch_size=5, generator=attack_generator(0), precision="bf16")
    assert half.dtype == torch.bool and len(half) == 12
    with pytest.raises(ValueError, match="precision"):
        robust_correct(model, x, y, spec, precision="fp8")


def test_device_helpers_lay_out_cpu_models_and_batches_in_channels_last_and_hold_nothing():
    model = tiny_model("vgg16")
    weight = model.features[0].weight if hasattr(model, "features") else next(model.parameters())
    assert runtime.fast_layout(model) is model and weight.is_contiguous(memory_format=torch.channels_last)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    held = runtime.hold_on_device((x, y), "cpu")
    assert held[0] is x and held[1] is y
    assert runtime.fast_batch(x, model).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(runtime.fast_batch(x, model), x)
    assert runtime.fast_batch(y, model) is y
    import contextlib

    assert isinstance(runtime.autocast("fp32", "cpu"), contextlib.nullcontext)
    assert isinstance(runtime.autocast("bf16", "cpu"), torch.autocast)


def test_every_job_log_names_the_device(tmp_path):
    import logging
    import sys

    log_file = tmp_path / "job.log"
    saved = sys.stderr
    try:
        runtime.configure_logging(log_file)
        logging.getLogger("advneurons").info("work")
    finally:
        sys.stderr.close()
        sys.stderr = saved
    first = log_file.read_text().splitlines()[0]
    assert "device: cpu (" in first and runtime.cpu_model() in first


def test_setup_makes_kernels_deterministic_without_loading_the_compiler():
    """runtime.setup is every job's first call: it sets deterministic kernels (warn only) without importing
    torch._inductor, which torch.use_deterministic_algorithms does and which costs seconds per job."""
    import subprocess
    import sys

    code = ("import sys, torch; from advneurons import runtime; runtime.setup(1, 0); "
            "assert torch.are_deterministic_algorithms_enabled(); "
            "assert torch.is_deterministic_algorithms_warn_only_enabled(); "
            "print('torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_end_step_runs_exit_handlers_and_flushes_the_log_before_skipping_the_teardown(tmp_path):
    """runtime.end_step ends every job (it saves the interpreter's teardown, ~0.9 s per job): what the step
    logged, a progress bar's unfinished line, stdout and the exit handlers (temporary folders' clean-up) must all
    still happen, with exit status 0."""
    import subprocess
    import sys

    log_file, marker = tmp_path / "step.log", tmp_path / "exit_handler_ran"
    code = (f"import atexit, sys, tempfile, pathlib\nfrom advneurons import runtime\n"
            f"runtime.configure_logging({str(log_file)!r})\n"
            f"scratch = tempfile.TemporaryDirectory(dir={str(tmp_path)!r})\n"
            f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('yes'))\n"
            "runtime.log.info('the step is done')\nsys.stderr.write('bar 100%')\nprint('to stdout', end='')\n"
            "runtime.end_step()\nraise SystemExit(3)  # never reached\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "to stdout"
    text = log_file.read_text()
    assert "the step is done" in text and text.endswith("bar 100%")
    assert marker.read_text() == "yes"
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # the temporary folder was removed


def test_a_native_crash_leaves_the_python_stack_in_the_job_log(tmp_path):
    """A kernel's segmentation fault (CI's of 2026-12-04) showed only as a signal in Snakemake's report and an
    unfinished progress bar in the log: configure_logging has the log record where Python was."""
    import subprocess
    import sys

    log_file = tmp_path / "step.log"
    code = (f"import os, signal\nfrom advneurons import runtime\nruntime.configure_logging({str(log_file)!r})\n"
            "def the_crashing_step():\n    os.kill(os.getpid(), signal.SIGSEGV)\nthe_crashing_step()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -11
    text = log_file.read_text()
    assert "Segmentation fault" in text and "the_crashing_step" in text


def test_end_step_leaves_a_session_a_person_drives_alone():
    """A script run in IPython (`%run`), a notebook or a debugger must not end that session."""
    import subprocess
    import sys

    for setup in ("sys.ps1 = '>>> '", "sys.settrace(lambda *args: None)"):
        code = f"import sys\nfrom advneurons import runtime\n{setup}\nruntime.end_step()\nprint('still here')\n"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout == "still here\n", setup


def test_every_workflow_script_ends_its_step_with_end_step():
    for path in sorted((ROOT / "workflow_scripts").glob("*.py")):
        last = [line for line in path.read_text().splitlines() if line.strip()][-1]
        assert last == "runtime.end_step()", path.name
