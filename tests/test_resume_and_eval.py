"""Paths that must not look like they worked when they did not (issue 12): resume with changed
settings, evaluating a training run, non-strict loading, stray temp files, a full disk, torn
metrics, official checkpoints given to resume, impossible settings."""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import subprocess
import sys
import zipfile

import pytest
import torch
from omegaconf import OmegaConf
from timm.utils import ModelEmaV3
from torch.utils.data import TensorDataset

from bixt.data.errors import data_errors_exit
from bixt.data.task_data import TaskData
from bixt.engine import run, start_checkpoint, trainer_config
from bixt.engine import run_dir as run_dir_mod
from bixt.engine.checkpointing import atomic_save
from bixt.engine.run_dir import LOCK, RunDirError, RunDirLock
from bixt.weights import load_weights
from bixt.tasks.classification import ClassificationAdapter
from test_engine import DiesAfter, Killed, NoisyBlobs, adapter, make_cfg, state, tiny_model

TRAIN, VAL = NoisyBlobs(96), NoisyBlobs(32, seed=1)  # 12 updates per epoch at batch 8


def train(run_dir, **trainer):
    return run(make_cfg(run_dir, **trainer), tiny_model(), adapter(), TaskData(TRAIN, VAL))


def lrs(run_dir) -> list[float]:
    return [r["lr"] for r in records(run_dir) if "lr" in r]


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def snapshot(run_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


# ----------------------------------------------------------------------------- resume with changes
def test_resume_with_more_epochs_follows_the_longer_schedule(tmp_path, caplog):
    """A finished 3-epoch run resumed with trainer.epochs=5 trains epochs 4-5 on the 5-epoch
    schedule (as a fresh 5-epoch run), not at the minimum lr of the 3-epoch one."""
    train(tmp_path / "fresh", epochs=5)
    train(tmp_path / "run", epochs=3)
    with caplog.at_level(logging.INFO, logger="bixt.engine"):
        train(tmp_path / "run", epochs=5, resume=True)
    assert lrs(tmp_path / "run")[3:] == pytest.approx(lrs(tmp_path / "fresh")[3:], rel=1e-9)
    assert lrs(tmp_path / "run")[3] > 10 * 1e-4  # min_lr is 1e-4
    assert "trainer.epochs 3 -> 5" in caplog.text and "rebuilt for 5 epochs x 12 updates" in caplog.text


def test_resume_with_another_batch_size_keeps_the_position_in_epochs(tmp_path):
    """Batch 8 -> 16 after 2 of 4 epochs: the schedule is rebuilt for 6 updates per epoch and ends at
    min_lr at the end of epoch 4 (the old state reached it after half the run)."""
    train(tmp_path / "fresh16", epochs=4, batch_size=16)
    train(tmp_path / "run", epochs=4, max_steps=24)  # stops cleanly after 2 epochs of 12 updates
    assert state(tmp_path / "run" / "last.pth")["epoch"] == 2
    train(tmp_path / "run", epochs=4, batch_size=16, resume=True)
    assert lrs(tmp_path / "run")[2:] == pytest.approx(lrs(tmp_path / "fresh16")[2:], rel=1e-9)
    assert lrs(tmp_path / "run")[2] > 1e-3 and state(tmp_path / "run" / "last.pth")["global_step"] == 24 + 2 * 6


def test_mid_epoch_resume_with_another_batch_size_maps_the_samples_or_refuses(tmp_path):
    common = dict(epochs=2, ckpt_every_steps=2)
    with pytest.raises(Killed):
        run(make_cfg(tmp_path / "run", **common), tiny_model(), DiesAfter(9), TaskData(TRAIN, VAL))
    ckpt = state(tmp_path / "run" / "last.pth")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, 8)  # 64 of the epoch's 96 samples used
    before = snapshot(tmp_path / "run")
    with pytest.raises(ValueError, match=r"trainer\.batch_size=24 .*64 is not a whole number"):
        train(tmp_path / "run", batch_size=24, resume=True, **common)
    assert snapshot(tmp_path / "run") == before  # a refused resume changes nothing
    # 64 samples = 4 updates of 16: the epoch continues with its last 2 updates, then one of 6
    metrics = train(tmp_path / "run", batch_size=16, resume=True, **common)
    assert metrics["epoch"] == 2 and metrics["step"] == 8 + 2 + 6


def test_resume_with_another_lr_trains_at_that_lr(tmp_path):
    def cfg(path, lr, **kw):
        c = make_cfg(path, **kw)
        c.optim.lr = lr
        return c

    run(cfg(tmp_path / "fresh", 0.5, epochs=4), tiny_model(), adapter(), TaskData(TRAIN, VAL))
    run(cfg(tmp_path / "run", 5e-2, epochs=4, max_steps=24), tiny_model(), adapter(), TaskData(TRAIN, VAL))
    run(cfg(tmp_path / "run", 0.5, epochs=4, resume=True), tiny_model(), adapter(), TaskData(TRAIN, VAL))
    assert lrs(tmp_path / "run")[2] == pytest.approx(lrs(tmp_path / "fresh")[2], rel=1e-9)
    assert lrs(tmp_path / "run")[2] > 0.05
    losses = [r["train/loss"] for r in records(tmp_path / "run")]
    assert losses[3] < 0.7 * losses[1], losses  # and it learns at it
    groups = state(tmp_path / "run" / "last.pth")["optimizer"]["param_groups"]
    assert all(g["initial_lr"] == 0.5 for g in groups)


def test_resume_with_another_optimizer_is_refused_naming_optim_name(tmp_path):
    train(tmp_path / "run", epochs=1)
    before = snapshot(tmp_path / "run")
    cfg = make_cfg(tmp_path / "run", epochs=2, resume=True)
    cfg.optim.name = "sgd"
    with pytest.raises(ValueError, match=r"optim.name='sgd'.*optim.name='adamw'.*trainer.checkpoint=PATH"):
        run(cfg, tiny_model(), adapter(), TaskData(TRAIN, VAL))
    cfg.optim.name = "adamw"
    cfg.optim.filter_bias_and_bn = False  # one parameter group instead of two
    with pytest.raises(ValueError, match="optim.filter_bias_and_bn True -> False"):
        run(cfg, tiny_model(), adapter(), TaskData(TRAIN, VAL))
    assert snapshot(tmp_path / "run") == before


def test_resume_with_the_same_settings_logs_no_changes(tmp_path, caplog):
    train(tmp_path / "run", epochs=1)
    with caplog.at_level(logging.INFO, logger="bixt.engine"):
        train(tmp_path / "run", epochs=1, resume=True)
    assert "changed settings" not in caplog.text and "already finished its 1 epochs" in caplog.text


# ----------------------------------------------------------------------------- eval_only of a run
def test_eval_only_of_a_run_evaluates_its_checkpoint_and_leaves_its_files_alone(tmp_path):
    run_dir = tmp_path / "run"
    fixed = TensorDataset(VAL.x, VAL.y)  # no random jitter: the same numbers whenever it is evaluated
    run(make_cfg(run_dir, epochs=2), tiny_model(), adapter(), TaskData(TRAIN, fixed))
    before, trained = snapshot(run_dir), records(run_dir)[-1]
    cfg = make_cfg(run_dir, eval_only=True, resume=True)
    metrics = run(cfg, tiny_model(), adapter(), TaskData(None, fixed))
    assert metrics["val/top1"] == trained["val/top1"] and metrics["val/loss"] == pytest.approx(trained["val/loss"])
    assert snapshot(run_dir) == before
    (evaluation,) = (run_dir / "eval").iterdir()
    assert json.loads((evaluation / "metrics.jsonl").read_text())["val/top1"] == metrics["val/top1"]
    assert (evaluation / "config.yaml").is_file()

    other = make_cfg(run_dir, eval_only=True, resume=True, checkpoint=str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="two checkpoints"):
        run(other, tiny_model(), adapter(), TaskData(None, fixed))


# ----------------------------------------------------------------------------- non-strict loading
def test_non_strict_loading_strips_wrapper_prefixes_and_refuses_to_load_nothing(tmp_path, caplog):
    source = tiny_model()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    compiled = torch.compile(source)  # state_dict keys get `_orig_mod.` (nothing is compiled here)
    ema = ModelEmaV3(compiled)  # `module._orig_mod.`
    for name, sd in (("compiled", compiled.state_dict()), ("ema", ema.state_dict()),
                     ("timm_ema", {"state_dict_ema": {f"module.{k}": v for k, v in source.state_dict().items()}})):
        torch.save(sd, tmp_path / f"{name}.pth")
        target = tiny_model()
        report = load_weights(target, tmp_path / f"{name}.pth", strict=False)
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), (name, key)
        assert "4 of 4 model tensors" in str(report) and report.complete

    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(RuntimeError, match="none of its 1 tensors"):
        load_weights(tiny_model(), tmp_path / "foreign.pth", strict=False)
    # and through the engine (trainer.checkpoint_strict=false)
    with pytest.raises(RuntimeError, match="none of its 1 tensors"):
        run(make_cfg(tmp_path / "eval", eval_only=True, checkpoint=str(tmp_path / "foreign.pth"),
                     checkpoint_strict=False), tiny_model(), adapter(), TaskData(None, VAL))


def test_non_strict_partial_load_reports_what_it_loaded(tmp_path, caplog):
    partial = {k: v for k, v in tiny_model().state_dict().items() if k.startswith("0.")}
    torch.save(partial, tmp_path / "partial.pth")
    with caplog.at_level(logging.WARNING):
        run(make_cfg(tmp_path / "eval", eval_only=True, checkpoint=str(tmp_path / "partial.pth"),
                     checkpoint_strict=False), tiny_model(), adapter(), TaskData(None, VAL))
    assert "2 of 4 model tensors" in caplog.text and "2 not in the checkpoint" in caplog.text
    assert "non-strict load" in caplog.text


# ----------------------------------------------------------------------------- task extras
def test_checkpoints_carry_the_adapters_class_names(tmp_path):
    run(make_cfg(tmp_path, epochs=1), tiny_model(), ClassificationAdapter(2, classes=["neg", "pos"]), TaskData(TRAIN, VAL))
    assert state(tmp_path / "last.pth")["classes"] == ["neg", "pos"]
    assert state(tmp_path / "best.pth")["classes"] == ["neg", "pos"]


# ----------------------------------------------------------------------------- kill / disk-full drill
def test_stray_temp_files_of_a_killed_write_are_removed_on_restart(tmp_path):
    train(tmp_path, epochs=1)
    stray = [tmp_path / ".last.pth.k1ll3d.tmp", tmp_path / ".best.pth.x9.tmp"]
    for p in stray:
        p.write_bytes(b"half a checkpoint")
    keep = tmp_path / ".notes.tmp"
    keep.write_text("not ours")
    train(tmp_path, epochs=2, resume=True)
    assert not any(p.exists() for p in stray) and keep.exists()


def _disk_full_save(obj, f, *args, **kwargs):
    """What torch.save does on ENOSPC: part of the file written, then a RuntimeError from its zip
    writer with the OSError as context."""
    f.write(b"PK partial")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


def test_a_full_disk_is_reported_as_such_and_keeps_last_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_save({"a": torch.ones(2)}, path)
    good = path.read_bytes()
    monkeypatch.setattr(torch, "save", _disk_full_save)
    with pytest.raises(OSError, match=r"no space left on device while writing .*last\.pth \(.* MiB free") as info:
        atomic_save({"a": torch.zeros(2)}, path)
    assert info.value.errno == errno.ENOSPC and "resume=true" in str(info.value)
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_a_full_disk_during_training_stops_with_the_path_and_a_resumable_run(tmp_path, monkeypatch):
    train(tmp_path, epochs=1)
    good = (tmp_path / "last.pth").read_bytes()
    with monkeypatch.context() as m:
        m.setattr(torch, "save", _disk_full_save)
        with pytest.raises(OSError, match="no space left on device"):
            train(tmp_path, epochs=2, resume=True)
    assert (tmp_path / "last.pth").read_bytes() == good
    assert not list(tmp_path.glob(".*.tmp"))
    assert train(tmp_path, epochs=2, resume=True)["epoch"] == 2


def test_a_torn_last_metrics_line_is_dropped_with_a_warning_naming_the_file(tmp_path, caplog):
    train(tmp_path, epochs=1)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train/lo')  # killed while appending
    with caplog.at_level(logging.WARNING):
        train(tmp_path, epochs=2, resume=True)
    assert "metrics.jsonl" in caplog.text and "torn" in caplog.text
    assert [r["epoch"] for r in records(tmp_path)] == [1, 2]

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not a JSON record"):
        train(tmp_path, epochs=3, resume=True)


def test_resume_of_an_official_checkpoint_says_what_it_is_and_how_to_use_it(tmp_path):
    official = {"epoch": 299, "arch": "bixt_ti_l64_p16", "state_dict": tiny_model().state_dict(), "optimizer": {},
                "args": argparse.Namespace(model="bixt_ti_l64_p16", lr=2.5e-3)}
    torch.save(official, tmp_path / "checkpoint-299.pth.tar")
    with pytest.raises(ValueError, match=r"official \(timm train.py\) training checkpoint.*trainer\.checkpoint=PATH"):
        train(tmp_path / "run", resume=str(tmp_path / "checkpoint-299.pth.tar"))
    with zipfile.ZipFile(tmp_path / "release.zip", "w") as archive:
        archive.write(tmp_path / "checkpoint-299.pth.tar", "model_best.pth.tar")
    with pytest.raises(ValueError, match="holds model weights but is not a training checkpoint.*finetune_from"):
        train(tmp_path / "run", resume=str(tmp_path / "release.zip"))
    (tmp_path / "torn.pth").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(RuntimeError, match="truncated"):
        train(tmp_path / "run", resume=str(tmp_path / "torn.pth"))


# ----------------------------------------------------------------------------- impossible settings
@pytest.mark.parametrize("key, value", [("epochs", 0), ("eval_batch_size", 0), ("batch_size", -4),
                                        ("num_workers", -1), ("accumulate", 0), ("eval_every", 0), ("threads", 0)])
def test_impossible_trainer_settings_fail_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"trainer\.{key}={value} \(expected"):
        trainer_config(OmegaConf.create({"trainer": {key: value}}))


def test_impossible_settings_fail_before_anything_is_written(tmp_path):
    cfg = make_cfg(tmp_path / "run", epochs=0)
    with pytest.raises(ValueError, match=r"trainer\.epochs=0"):
        run(cfg, tiny_model(), adapter(), TaskData(TRAIN, VAL))
    cfg = make_cfg(tmp_path / "run")
    cfg.optim.lr = -1.0
    with pytest.raises(ValueError, match=r"optim\.lr=-1\.0"):
        run(cfg, tiny_model(), adapter(), TaskData(TRAIN, VAL))
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the run directory (issue 25)
def test_a_new_run_into_a_finished_run_directory_is_refused_and_changes_nothing(tmp_path):
    train(tmp_path, epochs=1)
    before = snapshot(tmp_path)
    with pytest.raises(RunDirError, match=r"already holds a run \(config\.yaml, metrics\.jsonl, last\.pth, best\.pth\)"
                                          r".*resume=true .*another trainer\.run_dir"):
        train(tmp_path, epochs=2)
    assert snapshot(tmp_path) == before
    with pytest.raises(SystemExit, match=r"^error: .* already holds a run"):  # a task's entry point: one line
        with data_errors_exit():
            train(tmp_path, epochs=2)


def test_resume_auto_without_a_checkpoint_starts_afresh_with_only_its_own_metrics(tmp_path):
    train(tmp_path, epochs=1)
    (tmp_path / "last.pth").unlink()  # killed before its first checkpoint, say
    (tmp_path / "best.pth").unlink()
    train(tmp_path, epochs=2, resume="auto")
    assert [r["epoch"] for r in records(tmp_path)] == [1, 2]


def test_a_run_directory_in_use_is_refused_naming_the_process_and_a_dead_ones_lock_is_taken_over(tmp_path, caplog):
    with RunDirLock(tmp_path):
        with pytest.raises(RunDirError, match=rf"in use by another run \(process {os.getpid()} on "):
            train(tmp_path, epochs=1)
    assert not (tmp_path / LOCK).exists() and not (tmp_path / "config.yaml").exists()

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK).write_text(f"{gone.stdout.strip()} somehost\n")  # its process was killed
    with caplog.at_level(logging.WARNING, logger="bixt.engine"):
        assert train(tmp_path, epochs=1)["epoch"] == 1
    assert f"left by process {gone.stdout.strip()} on somehost, which is gone" in caplog.text
    assert not (tmp_path / LOCK).exists()  # released at the end


def test_eval_only_in_a_run_directory_without_resume_evaluates_its_last_checkpoint(tmp_path, caplog, monkeypatch):
    fixed = TensorDataset(VAL.x, VAL.y)
    run(make_cfg(tmp_path, epochs=2), tiny_model(), adapter(), TaskData(TRAIN, fixed))
    before, trained = snapshot(tmp_path), records(tmp_path)[-1]
    monkeypatch.setattr(run_dir_mod, "_stamp", lambda: "same-second")
    with caplog.at_level(logging.INFO, logger="bixt.engine"):
        cfg = make_cfg(tmp_path, eval_only=True)
        metrics = [run(cfg, tiny_model(), adapter(), TaskData(None, fixed)),  # the engine resolves the start
                   run(cfg, tiny_model(), adapter(), TaskData(None, fixed), start=start_checkpoint(cfg))]  # the kit's way
    assert metrics[0]["val/top1"] == metrics[1]["val/top1"] == trained["val/top1"]  # not random weights
    assert caplog.text.count("evaluating its last.pth") == 2 and "model as built" not in caplog.text  # once per run
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["same-second", "same-second-2"]


def _read_only(monkeypatch, directory):
    """Writes under ``directory`` fail as on a read-only file system (chmod does not stop root)."""
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(directory)) and (real is real_mkdir or args[0] & os.O_CREAT):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", refuse(real_open))
    monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))


def test_a_read_only_run_directory_stops_resume_and_eval_with_one_line(tmp_path, monkeypatch):
    train(tmp_path, epochs=1)
    _read_only(monkeypatch, tmp_path)
    with pytest.raises(SystemExit, match=rf"^error: cannot write to the run directory {tmp_path} \(Read-only file "
                                         r"system\).*resume=true trainer\.run_dir=COPY"):
        with data_errors_exit():
            train(tmp_path, epochs=2, resume=True)
    with pytest.raises(SystemExit, match=rf"^error: cannot write this evaluation's results into {tmp_path} .*"
                                         r"another trainer\.run_dir"):
        with data_errors_exit():
            train(tmp_path, eval_only=True, resume=True)


def test_outside_hydra_the_default_run_directory_is_never_shared(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_dir_mod, "_stamp", lambda: "same-second")
    for _ in range(2):
        run(make_cfg(None, epochs=1), tiny_model(), adapter(), TaskData(TRAIN, VAL))
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["same-second", "same-second-2"]


def test_logs_and_metrics_number_epochs_alike(tmp_path, caplog):
    """Epochs count from 1 in every log line and in metrics.jsonl; a checkpoint's position is
    "end of epoch N" or "epoch N, after K of its updates"."""
    with pytest.raises(Killed):
        run(make_cfg(tmp_path, epochs=2, ckpt_every_steps=4), tiny_model(), DiesAfter(6), TaskData(TRAIN, VAL))
    with caplog.at_level(logging.INFO, logger="bixt.engine"):
        metrics = run(make_cfg(tmp_path, epochs=2, ckpt_every_steps=4, resume=True), tiny_model(), adapter(),
                      TaskData(TRAIN, VAL, tests={"t": VAL}))
    assert "at epoch 1, after 4 of its updates (global step 4)" in caplog.text
    assert [r["epoch"] for r in records(tmp_path) if "epoch" in r] == [1, 2]
    best_epoch = 1 + [r["val/top1"] for r in records(tmp_path) if "epoch" in r].index(metrics["best/top1"])
    assert f"best checkpoint (end of epoch {best_epoch})" in caplog.text


# ----------------------------------------------------------------------------- the start checkpoint, read once
@pytest.fixture
def torch_loads(monkeypatch):
    """The paths torch.load reads from here on."""
    paths, load = [], torch.load

    def counting(f, *args, **kwargs):
        paths.append(str(f))
        return load(f, *args, **kwargs)
    monkeypatch.setattr(torch, "load", counting)
    return paths


@pytest.mark.parametrize("mode", ["eval", "resume", "weights"])
def test_the_start_checkpoint_is_read_once_and_hands_its_class_names_to_the_task(tmp_path, torch_loads, mode):
    run(make_cfg(tmp_path / "run", epochs=1), tiny_model(), ClassificationAdapter(2, classes=["neg", "pos"]), TaskData(TRAIN, VAL))
    last = tmp_path / "run" / "last.pth"
    trainer = {"eval": dict(eval_only=True, resume=True), "resume": dict(resume=True, epochs=2),
               "weights": dict(checkpoint=str(last), run_dir=str(tmp_path / "finetune"))}[mode]
    cfg = make_cfg(tmp_path / "run", **trainer)
    torch_loads.clear()
    start = start_checkpoint(cfg)
    assert (start.path, start.kind, start.classes) == (last, mode, ["neg", "pos"])
    assert start.binds_labels == (mode != "weights") and start.metadata == {"classes": ["neg", "pos"]}
    metrics = run(cfg, tiny_model(), ClassificationAdapter(2, classes=start.classes), TaskData(TRAIN, VAL), start=start)
    assert torch_loads == [str(last)]  # the task's read is the engine's
    assert "val/top1" in metrics if mode == "eval" else metrics["epoch"] == 2
    with pytest.raises(RuntimeError, match="already used by a run"):
        start.take_contents()


def test_a_start_checkpoint_of_another_config_is_refused(tmp_path):
    train(tmp_path / "run", epochs=1)
    start = start_checkpoint(make_cfg(tmp_path / "run", resume=True, epochs=2))
    with pytest.raises(ValueError, match=r"run\(start=...\) holds the resume checkpoint .*last\.pth, but cfg\.trainer "
                                         r"names no start checkpoint"):
        run(make_cfg(tmp_path / "other", epochs=1), tiny_model(), adapter(), TaskData(TRAIN, VAL), start=start)
    assert start_checkpoint(make_cfg(tmp_path / "fresh", epochs=1)) is None


def test_a_task_loads_a_pretraining_checkpoint_with_its_drop_rule_and_the_engine_loads_nothing(tmp_path, torch_loads):
    from bixt.weights import drop_prefixes

    source = tiny_model()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    pretrain = {"state_dict": {**{f"backbone.{k}": v for k, v in source.state_dict().items()},
                               "decoder.weight": torch.zeros(3, 3), "mask_token": torch.zeros(1, 1, 3)}}
    torch.save(pretrain, tmp_path / "pretrain.pth")
    cfg = make_cfg(tmp_path / "finetune", checkpoint=str(tmp_path / "pretrain.pth"), epochs=1)
    torch_loads.clear()
    start, model = start_checkpoint(cfg), tiny_model()
    report = start.load_into(model, within="backbone", drop=drop_prefixes("pre-training decoder", "decoder.", "mask_token"))
    assert report.loaded == report.total == 4
    (why,) = report.dropped
    assert why.startswith("outside backbone.*") and sorted(report.dropped[why]) == ["decoder.weight", "mask_token"]
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    run(cfg, model, adapter(), TaskData(TRAIN, VAL), start=start)  # a second load would fail: no tensor matches
    assert torch_loads == [str(tmp_path / "pretrain.pth")]
