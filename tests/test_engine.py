"""The shared training engine: configs, samplers, seeding, checkpoints, resume, accumulation."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset

from bixt.data.task_data import TaskData
from bixt.engine import TaskAdapter, TrainerConfig, optim_config, run, seed_everything, trainer_config
from bixt.engine.checkpointing import atomic_save, load_training_checkpoint, resolve_resume
from bixt.metrics.classification import TopKEvaluator
from bixt.tasks.classification import ClassificationAdapter
from bixt.engine.optim import build_optimizer, build_scheduler, scaled_lr
from bixt.engine.reproducibility import (ResumableSampler, SeededDataset, ShardedSampler, capture_rng_state,
                                         restore_rng_state, rng_guarded)


# ----------------------------------------------------------------------------- tiny task
class NoisyBlobs(Dataset):
    """2-class toy data whose samples use the global RNGs (like random augmentation does)."""

    def __init__(self, n: int = 96, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x[:, 0] + 0.5 * self.x[:, 1] > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        jitter = 0.1 * torch.randn(8) + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        return self.x[i] + jitter, self.y[i]


def tiny_model(dropout: float = 0.1) -> nn.Module:
    seed_everything(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 2))


def make_cfg(tmp_path, **trainer):
    base = dict(epochs=2, batch_size=8, num_workers=0, run_dir=None if tmp_path is None else str(tmp_path),
                log_every=0, progress=False)
    base.update(trainer)
    return OmegaConf.create({"trainer": base, "optim": {"name": "adamw", "lr": 5e-2, "warmup_epochs": 1,
                                                        "min_lr": 1e-4}})


def adapter():
    return ClassificationAdapter(num_classes=2)


class Killed(Exception):
    """Stands for the process dying (kill -9): nothing after it runs, nothing is saved."""


class DiesAfter(ClassificationAdapter):
    """A classification adapter whose process "dies" in the first loss after ``updates``
    optimizer steps of ``accumulate`` micro-batches each."""

    def __init__(self, updates: int, accumulate: int = 1):
        super().__init__(num_classes=2)
        self.losses_left = updates * accumulate

    def loss(self, outputs, batch):
        if self.losses_left == 0:
            raise Killed()
        self.losses_left -= 1
        return super().loss(outputs, batch)


def state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- configs
def test_unknown_trainer_key_is_an_error_listing_valid_keys():
    cfg = OmegaConf.create({"trainer": {"epochz": 3}})
    with pytest.raises(ValueError, match="valid keys of `trainer`.*epochs"):
        trainer_config(cfg)


def test_config_interpolations_resolve_against_the_whole_config():
    cfg = OmegaConf.create({"data": {"workers": 3}, "trainer": {"num_workers": "${data.workers}"}, "optim": {}})
    assert trainer_config(cfg).num_workers == 3
    assert optim_config(cfg).name == "adamw"


def test_lr_scaling_with_global_batch():
    ocfg = optim_config(OmegaConf.create({"optim": {"lr": 2.5e-3, "lr_base_batch": 1024, "lr_scale": "sqrt"}}))
    assert scaled_lr(ocfg, 1024) == pytest.approx(2.5e-3)
    assert scaled_lr(ocfg, 256) == pytest.approx(2.5e-3 / 2)
    ocfg.lr_scale = "linear"
    assert scaled_lr(ocfg, 256) == pytest.approx(2.5e-3 / 4)
    ocfg.lr_base_batch = None
    assert scaled_lr(ocfg, 256) == pytest.approx(2.5e-3)


def test_official_recipe_schedule_shape():
    """lambc, 5 warm-up epochs from 1e-6, cosine per epoch to 1e-5 over 800 epochs."""
    ocfg = optim_config(OmegaConf.create({"optim": {
        "name": "lambc", "lr": 2.5e-3, "eps": 1e-8, "sched": "cosine", "sched_on_epochs": True,
        "warmup_epochs": 5, "warmup_lr": 1e-6, "min_lr": 1e-5}}))
    model = nn.Linear(4, 4)
    opt = build_optimizer(model, ocfg, 2.5e-3)
    assert type(opt).__name__ == "Lamb" and opt.defaults["trust_clip"] and opt.defaults["eps"] == 1e-8
    sched = build_scheduler(opt, ocfg, epochs=800, updates_per_epoch=100)

    def lr_at(epoch, step):
        sched.step(epoch)
        sched.step_update(step)
        return opt.param_groups[0]["lr"]

    assert lr_at(0, 0) == pytest.approx(1e-6)
    assert lr_at(5, 500) == pytest.approx(2.5e-3, rel=1e-3)
    assert lr_at(0, 50) == lr_at(0, 99)  # stepped per epoch: constant within an epoch
    assert lr_at(799, 79900) == pytest.approx(1e-5, rel=0.05)


# ----------------------------------------------------------------------------- reproducibility
def test_resumable_sampler_skips_exactly_the_consumed_samples():
    data = list(range(50))
    full = ResumableSampler(data, num_replicas=1, rank=0, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert sorted(i for _, i in order) == data and all(e == 2 for e, _ in order)
    skipped = ResumableSampler(data, num_replicas=1, rank=0, seed=3)
    skipped.set_epoch(2)
    skipped.set_start(16)
    assert list(skipped) == order[16:] and len(skipped) == 34
    full.set_epoch(3)
    assert list(full) != order  # a new permutation each epoch


def test_two_rank_shards_cover_the_single_process_batch():
    data = list(range(40))
    single = ResumableSampler(data, num_replicas=1, rank=0, seed=0)
    ranks = [ResumableSampler(data, num_replicas=2, rank=r, seed=0) for r in range(2)]
    first_global_batch = {i for _, i in list(single)[:8]}
    assert {i for s in ranks for _, i in list(s)[:4]} == first_global_batch


def test_sharded_eval_sampler_counts_every_sample_once():
    shards = [list(ShardedSampler(11, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


def test_seeded_samples_do_not_depend_on_global_rng_and_leave_it_alone():
    ds = SeededDataset(NoisyBlobs(), seed=5)
    torch.manual_seed(1)
    a = ds[(0, 3)][0]
    torch.manual_seed(2)
    np.random.seed(7)
    b = ds[(0, 3)][0]
    assert torch.equal(a, b)
    assert not torch.equal(ds[(1, 3)][0], a)  # a new draw in the next epoch
    seed_everything(11)
    before = capture_rng_state()
    list(rng_guarded(ds[(0, i)] for i in range(5)))
    after = capture_rng_state()
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]


def test_rng_state_roundtrip_through_a_weights_only_checkpoint(tmp_path):
    seed_everything(0)
    saved = capture_rng_state()
    atomic_save({"rng": saved}, tmp_path / "rng.pth")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


# ----------------------------------------------------------------------------- checkpoints
def test_atomic_save_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / "last.pth"
    atomic_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_resolve_resume(tmp_path):
    assert resolve_resume(False, str(tmp_path)) is None
    assert resolve_resume("auto", str(tmp_path)) is None
    with pytest.raises(FileNotFoundError, match="last.pth"):
        resolve_resume(True, str(tmp_path))
    with pytest.raises(ValueError, match="run_dir"):
        resolve_resume(True, None)
    (tmp_path / "last.pth").write_bytes(b"")
    assert resolve_resume("auto", str(tmp_path)) == tmp_path / "last.pth"
    assert resolve_resume(str(tmp_path), None) == tmp_path / "last.pth"


# ----------------------------------------------------------------------------- the loop
def test_run_trains_and_writes_the_run_directory(tmp_path):
    metrics = run(make_cfg(tmp_path, epochs=5, ema=True), tiny_model(), adapter(),
                  TaskData(NoisyBlobs(), NoisyBlobs(32, seed=1)))
    assert metrics["epoch"] == 5 and metrics["step"] == 5 * 12
    assert metrics["val/top1"] > 80 and "val_ema/top1" in metrics and "best/top1" in metrics
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "metrics.csv", "last.pth", "best.pth"} <= names
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["train/loss"] > records[-1]["train/loss"]
    ckpt = load_training_checkpoint(tmp_path / "last.pth")  # weights_only=True inside
    assert {"state_dict", "state_dict_ema", "optimizer", "scheduler", "scaler", "rng", "config"} <= set(ckpt)
    assert ckpt["epoch"] == 5 and ckpt["config"]["trainer"]["epochs"] == 5


@pytest.mark.parametrize("accumulate", [1, 2])
def test_abort_and_resume_gives_identical_weights(tmp_path, accumulate):
    """Stop dead mid-epoch (as if killed), resume from the last periodic checkpoint: same result."""
    train, val = NoisyBlobs(100), NoisyBlobs(32, seed=1)
    common = dict(epochs=3, accumulate=accumulate, ckpt_every_steps=2, ema=True)
    run(make_cfg(tmp_path / "straight", **common), tiny_model(), adapter(), TaskData(train, val))

    interrupted = tmp_path / "interrupted"
    # 12 batches of 8 per epoch; die at update 9 (epoch 2 when accumulating), after the checkpoint at 8
    with pytest.raises(Killed):
        run(make_cfg(interrupted, **common), tiny_model(), DiesAfter(9, accumulate), TaskData(train, val))
    ckpt = state(interrupted / "last.pth")
    assert ckpt["global_step"] == 8 and ckpt["step_in_epoch"] > 0  # a mid-epoch checkpoint
    run(make_cfg(interrupted, resume=True, **common), tiny_model(), adapter(), TaskData(train, val))

    a, b = state(tmp_path / "straight" / "last.pth"), state(interrupted / "last.pth")
    for key in ("state_dict", "state_dict_ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    straight = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in straight] == [r["train/loss"] for r in resumed]
    assert [r["val/top1"] for r in straight] == [r["val/top1"] for r in resumed]


def test_results_do_not_depend_on_the_number_of_loader_workers(tmp_path):
    """Per-sample seeding + shielding the training RNG from main-process loading (train and eval)."""
    for workers in (0, 2):
        run(make_cfg(tmp_path / f"w{workers}", epochs=2, num_workers=workers), tiny_model(), adapter(),
            TaskData(NoisyBlobs(), NoisyBlobs(32, seed=1)))
    a, b = state(tmp_path / "w0" / "last.pth"), state(tmp_path / "w2" / "last.pth")
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    train, val = NoisyBlobs(64), NoisyBlobs(16, seed=1)
    sgd = {"name": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 0.0, "sched": "none"}

    def cfg(path, **kw):
        c = make_cfg(path, epochs=1, max_steps=2, **kw)
        c.optim = sgd
        return c

    run(cfg(tmp_path / "big", batch_size=16), tiny_model(0.0), adapter(), TaskData(train, val))
    run(cfg(tmp_path / "acc", batch_size=8, accumulate=2), tiny_model(0.0), adapter(), TaskData(train, val))
    a, b = state(tmp_path / "big" / "last.pth"), state(tmp_path / "acc" / "last.pth")
    assert a["global_step"] == b["global_step"] == 2
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(tensor, b["state_dict"][name], rtol=0, atol=1e-6)
    moved = [not torch.equal(t, tiny_model(0.0).state_dict()[name]) for name, t in a["state_dict"].items()]
    assert all(moved)  # equal because both took the same steps, not because neither took any


def test_eval_only_loads_the_checkpoint_and_reports(tmp_path):
    run(make_cfg(tmp_path / "train"), tiny_model(), adapter(), TaskData(NoisyBlobs(), NoisyBlobs(32, seed=1)))
    trained = json.loads((tmp_path / "train" / "metrics.jsonl").read_text().splitlines()[-1])
    cfg = make_cfg(tmp_path / "eval", eval_only=True, checkpoint=str(tmp_path / "train" / "last.pth"))
    metrics = run(cfg, tiny_model(), adapter(), TaskData(None, NoisyBlobs(32, seed=1)))
    assert metrics["val/top1"] == trained["val/top1"]
    assert not (tmp_path / "eval" / "last.pth").exists()


def test_non_finite_loss_stops_with_advice(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="clip_grad"):
        run(make_cfg(tmp_path), model, adapter(), TaskData(NoisyBlobs(), NoisyBlobs(32, seed=1)))


def test_a_training_set_smaller_than_a_batch_still_trains(tmp_path):
    metrics = run(make_cfg(tmp_path, epochs=6, batch_size=64), tiny_model(), adapter(), TaskData(NoisyBlobs(10), NoisyBlobs(8)))
    assert metrics["step"] == 6  # one batch of 10 per epoch
    losses = [json.loads(line)["train/loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.7 * losses[0], losses  # it learns (without the optimizer step it stays at ~0.70)


def test_gradient_clipping_bounds_the_update(tmp_path):
    cfg = make_cfg(tmp_path, epochs=1, max_steps=1, clip_grad=1e-3)
    cfg.optim = {"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "sched": "none",
                 "kwargs": {"nesterov": False}}
    before = [p.detach().clone() for p in tiny_model().parameters()]
    run(cfg, tiny_model(), adapter(), TaskData(NoisyBlobs(), NoisyBlobs(8)))
    after = state(tmp_path / "last.pth")["state_dict"].values()
    step = torch.cat([(a - b).flatten() for a, b in zip(after, before)])
    assert 0 < step.norm() <= 0.5 * 1e-3 * (1 + 1e-4)


def test_progress_bar_only_on_rank_zero_and_terminals(monkeypatch):
    from bixt.engine.reporting import show_progress

    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert not show_progress(None, is_main=True)
    assert not show_progress(True, is_main=False)
    assert show_progress(True, is_main=True)


# ----------------------------------------------------------------------------- classification pieces
def test_topk_evaluator():
    ev = TopKEvaluator(num_classes=6)
    logits = torch.tensor([[0., 1, 2, 3, 4, 5], [5., 4, 3, 2, 1, 0]])
    ev.update(logits, (None, torch.tensor([5, 2])))
    ev.update(logits[:1], (None, torch.tensor([0])))
    out = ev.compute(ev.state())
    assert out["top1"] == pytest.approx(100 / 3) and out["top5"] == pytest.approx(200 / 3)
    assert TopKEvaluator(num_classes=2).compute(TopKEvaluator(2).state()).keys() == {"top1", "loss"}


def test_mixup_adapter_makes_soft_targets_and_checks_batch_size():
    ad = ClassificationAdapter(4, loss="bce", mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0})
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    original = x.clone()  # timm mixes in place
    np.random.seed(0)
    mx, my = ad.train_batch_transform((x, y))
    assert my.shape == (4, 4) and torch.allclose(my.sum(1), torch.ones(4))
    assert ad.loss(torch.zeros(4, 4), (mx, my)).item() == pytest.approx(np.log(2), rel=1e-4)
    with pytest.raises(ValueError, match="even batch size"):
        ad.train_batch_transform((x[:3], y[:3]))
    assert not torch.equal(mx, original) and bool((my < 1).any())  # samples and targets were mixed


def test_mixup_config_defaults_and_label_smoothing():
    cutmix_only = ClassificationAdapter(4, mixup={"cutmix_alpha": 1.0})
    assert cutmix_only.mixup.mixup_alpha == 0.0 and cutmix_only.mixup.cutmix_alpha == 1.0
    assert ClassificationAdapter(4, smoothing=0.1, mixup={"cutmix_alpha": 1.0}).mixup.label_smoothing == 0.1
    explicit = ClassificationAdapter(4, smoothing=0.1, mixup={"mixup_alpha": 0.2, "label_smoothing": 0.0})
    assert explicit.mixup.label_smoothing == 0.0
    assert ClassificationAdapter(4, mixup={}).mixup is None


def test_cpu_evaluation_runs_an_accel_copy_with_the_current_weights(monkeypatch, tmp_path):
    import bixt.engine.trainer as trainer_mod
    from bixt import accel

    copies = []
    real = accel.optimize

    def spy(model):
        copies.append(real(model))
        return copies[-1]

    monkeypatch.setattr(trainer_mod.accel, "optimize", spy)
    engine = trainer_mod._Engine.__new__(trainer_mod._Engine)  # only what _inference_copy reads
    engine.tcfg, engine.device, engine.amp_dtype = TrainerConfig(), torch.device("cpu"), None
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    engine.eval_model = model
    x = torch.randn(2, 4)
    with torch.no_grad():
        net = engine._inference_copy(model)
        torch.testing.assert_close(net(x), model(x))
        model[0].weight.add_(1.0)  # the next evaluation sees the new weights
        torch.testing.assert_close(engine._inference_copy(model)(x), model(x))
    assert len(copies) == 2 and isinstance(net[0], accel.PackedLinear)
    engine.tcfg = TrainerConfig(accel=False)
    assert engine._inference_copy(model) is model


def test_few_optimizer_steps_are_warned_about(caplog):
    from bixt.engine.trainer import warn_if_few_updates

    with caplog.at_level("WARNING", logger="bixt.engine"):
        assert warn_if_few_updates(TrainerConfig(epochs=12), 22, 1400, 64)
    assert "only 264 optimizer steps" in caplog.text and "23 epochs make 506 steps" in caplog.text
    assert not warn_if_few_updates(TrainerConfig(epochs=12), 156, 10000, 64)  # the embedded default: 1872
    assert not warn_if_few_updates(TrainerConfig(epochs=1, min_updates=0), 2, 100, 64)


def test_run_puts_every_process_wide_setting_back(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    run(make_cfg(tmp_path, epochs=1, deterministic=True, threads=1), tiny_model(), adapter(),
        TaskData(NoisyBlobs(16), NoisyBlobs(8, seed=1)))
    after = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    assert after == before and "CUBLAS_WORKSPACE_CONFIG" not in __import__("os").environ


def test_the_header_gives_parameters_and_flops_per_sample_and_changes_nothing(tmp_path, caplog, monkeypatch):
    """Counted on one validation sample (8 -> 16 -> 2 linears: 2 * (128 + 32) FLOPs, 178 weights), in eval-only
    runs too; the count leaves every random stream alone (NoisyBlobs draws from the global RNGs)."""
    data = TaskData(NoisyBlobs(32), NoisyBlobs(8, seed=1))
    with caplog.at_level("INFO", logger="bixt.engine"):
        run(make_cfg(tmp_path / "counted", epochs=2), tiny_model(), adapter(), data)
    header = "178 parameters (178 trainable), 320 FLOPs per sample forward | 32 train / 8 val samples"
    assert header in caplog.text
    from bixt.engine.trainer import _Engine

    def fails(self, dataset):
        raise RuntimeError("cannot trace this\nsecond line")

    monkeypatch.setattr(_Engine, "_flops_per_sample", fails)
    caplog.clear()
    with caplog.at_level("INFO", logger="bixt.engine"):
        run(make_cfg(tmp_path / "uncounted", epochs=2), tiny_model(), adapter(), data)
    assert "178 parameters (178 trainable), FLOPs: not counted (RuntimeError: cannot trace this) |" in caplog.text
    a, b = state(tmp_path / "counted" / "last.pth"), state(tmp_path / "uncounted" / "last.pth")
    assert all(torch.equal(t, b["state_dict"][k]) for k, t in a["state_dict"].items())
    monkeypatch.undo()
    caplog.clear()
    cfg = make_cfg(tmp_path / "eval", eval_only=True, checkpoint=str(tmp_path / "counted" / "last.pth"))
    with caplog.at_level("INFO", logger="bixt.engine"):
        run(cfg, tiny_model(), adapter(), TaskData(None, NoisyBlobs(8, seed=1)))
    assert "178 parameters (178 trainable), 320 FLOPs per sample forward | 8 val samples" in caplog.text


class DuckTypedAdapter:
    """A user's adapter with every required member but without the TaskAdapter base."""

    main_metric = "top1"

    def forward(self, model, batch):
        return model(batch[0])

    def loss(self, outputs, batch):
        return nn.functional.cross_entropy(outputs, batch[1])

    def batch_size(self, batch):
        return int(batch[0].shape[0])

    def make_evaluator(self):
        return TopKEvaluator(2)


def test_an_adapter_without_the_base_is_refused_naming_it(tmp_path):
    with pytest.raises(TypeError, match=r"DuckTypedAdapter is not a bixt.engine.TaskAdapter: subclass it"):
        run(make_cfg(tmp_path, epochs=1), tiny_model(), DuckTypedAdapter(), TaskData(NoisyBlobs(32), NoisyBlobs(8, seed=1)))
    assert not tmp_path.joinpath("config.yaml").exists()
    # the same members on the base train; one missing is named when the adapter is built
    class Based(DuckTypedAdapter, TaskAdapter):
        pass

    based = Based
    metrics = run(make_cfg(tmp_path, epochs=1), tiny_model(), based(), TaskData(NoisyBlobs(32), NoisyBlobs(8, seed=1)))
    assert metrics["step"] == 4 and based().sample_name == "samples" and based().main_metric_mode == "max"
    no_forward = type("NoForward", (TaskAdapter,), {k: v for k, v in vars(DuckTypedAdapter).items() if k != "forward"})
    with pytest.raises(TypeError, match="abstract method.*forward"):
        no_forward()


def test_overridden_hooks_of_a_base_adapter_are_used(tmp_path):
    class Counting(ClassificationAdapter):
        def __init__(self):
            super().__init__(num_classes=2)
            self.transformed = 0
            self.checkpoint_extra = {"note": "kept"}

        def train_batch_transform(self, batch):
            self.transformed += 1
            return batch

    counting = Counting()
    run(make_cfg(tmp_path, epochs=1), tiny_model(), counting, TaskData(NoisyBlobs(32), NoisyBlobs(8, seed=1)))
    assert counting.transformed == 4  # every training batch: 32 samples / batch 8
    assert torch.load(tmp_path / "last.pth", map_location="cpu", weights_only=True)["note"] == "kept"


# ----------------------------------------------------------------------------- precision (issue 24)
class DtypeSpy(ClassificationAdapter):
    """Records the dtype of the training logits (bf16 under bf16 autocast)."""

    def __init__(self):
        super().__init__(num_classes=2)
        self.dtypes = set()

    def loss(self, outputs, batch):
        self.dtypes.add(outputs.dtype)
        return super().loss(outputs, batch)


@pytest.mark.parametrize("probe, dtype, line", [
    ((True, "AMX"), torch.bfloat16, "amp=bf16 (native bf16 GEMMs: AMX)"),
    ((False, "AVX2"), torch.float32, "amp=fp32 (no native bf16 GEMMs on this CPU: AVX2)")])
def test_amp_auto_trains_in_bf16_only_where_the_cpu_has_native_bf16_gemms(tmp_path, monkeypatch, caplog,
                                                                         probe, dtype, line):
    from bixt.engine import precision

    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: probe)
    spy = DtypeSpy()
    with caplog.at_level("INFO", logger="bixt.engine"):
        run(make_cfg(tmp_path, epochs=1, max_steps=2), tiny_model(), spy, TaskData(NoisyBlobs(32), NoisyBlobs(8, seed=1)))
    assert spy.dtypes == {dtype} and line in caplog.text


def test_forced_bf16_on_a_cpu_without_native_bf16_warns_once(tmp_path, monkeypatch, caplog):
    from bixt.engine import precision

    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (False, "AVX2"))
    with caplog.at_level("INFO", logger="bixt.engine"):
        run(make_cfg(tmp_path, epochs=1, max_steps=3, amp="bf16"), tiny_model(), adapter(), TaskData(NoisyBlobs(32),
            NoisyBlobs(8, seed=1)))
    slower = [r for r in caplog.records if "slower than fp32" in r.getMessage()]
    assert len(slower) == 1 and slower[0].levelname == "WARNING" and "(AVX2)" in slower[0].getMessage()
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (True, "AVX-512 BF16"))
    caplog.clear()
    assert precision.autocast_dtype("bf16", torch.device("cpu"))[0] == torch.bfloat16 and not caplog.records


def test_the_cpu_probe_reads_the_native_bf16_flags(monkeypatch):
    from bixt.engine import precision

    try:
        for flags, native, what in (({"avx2", "avx512f", "amx_bf16"}, True, "AMX"),
                                    ({"avx512f", "avx512_bf16"}, True, "AVX-512 BF16"),
                                    ({"avx2", "fma"}, False, torch.backends.cpu.get_cpu_capability())):
            monkeypatch.setattr(precision, "_cpu_flags", lambda: flags)
            precision.cpu_bf16_support.cache_clear()
            assert precision.cpu_bf16_support() == (native, what)
    finally:
        monkeypatch.undo()
        precision.cpu_bf16_support.cache_clear()
