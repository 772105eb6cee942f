"""The training / evaluation loop behind :func:`bixt.engine.run` (see the package docstring)."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from bixt.data.task_data import TaskData
from bixt.engine import checkpointing as ckpt_io
from bixt import accel
from bixt.engine.config import OptimConfig, TrainerConfig, optim_config, trainer_config
from bixt.engine.distributed import (DistEnv, all_reduce_sum, barrier, broadcast_object, cleanup,
                                     gather_objects, init_distributed)
from bixt.engine.optim import build_optimizer, build_scheduler, scaled_lr
from bixt.engine.reporting import METRICS_JSONL, MetricsWriter, format_metrics, progress_bar, show_progress
from bixt.engine.resume import Layout, effective_batch, load_optimizer_state, plan_resume
from bixt.engine.reproducibility import (ResumableSampler, SeededDataset, ShardedSampler, capture_rng_state,
                                         restore_rng_state, rng_guarded, seed_everything)
from bixt.engine.task import TaskAdapter, as_task_adapter
from bixt.runtime import tune_cpu_allocator

log = logging.getLogger("bixt.engine")

#: what the engine itself writes into a checkpoint (an adapter's checkpoint_extra may not reuse these)
_CHECKPOINT_KEYS = {"state_dict", "state_dict_ema", "optimizer", "scheduler", "scaler", "epoch", "step_in_epoch",
                    "global_step", "epoch_sums", "best", "rng", "world_size", "config", "arch", "layout"}

_AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
               "float16": torch.float16, "fp32": None, "float32": None, "none": None}


def run(cfg: DictConfig, model: nn.Module, adapter: TaskAdapter, data: TaskData) -> dict[str, float]:
    """Train ``model`` on ``data.train`` (or only evaluate it), evaluating on ``data.val`` and, at
    the end, on each of ``data.tests``. Returns the final metrics as a flat ``{name: float}`` dict."""
    tcfg, ocfg = trainer_config(cfg), optim_config(cfg)
    env = init_distributed(tcfg.device)
    try:
        with process_settings_restored():
            return _Engine(cfg, tcfg, ocfg, env, model, adapter, data.collate_fn).fit(data.train, data.val, data.tests)
    finally:
        cleanup(env)


@contextlib.contextmanager
def process_settings_restored() -> Iterator[None]:
    """Every process-wide setting the engine may change (threads, deterministic algorithms, cuDNN
    and TF32 switches, CUBLAS_WORKSPACE_CONFIG) is put back afterwards: tests, notebooks and sweeps
    call run() many times in one process."""
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def warn_if_few_updates(tcfg: TrainerConfig, updates_per_epoch: int, train_size: int, global_batch: int) -> bool:
    """Warn when the whole run makes fewer optimizer steps than ``trainer.min_updates``: a small
    data set at the default length trains a few hundred steps and stops far from converged."""
    total = tcfg.epochs * updates_per_epoch
    if tcfg.max_steps is not None or not tcfg.min_updates or total >= tcfg.min_updates:
        return False
    epochs = math.ceil(tcfg.min_updates / max(updates_per_epoch, 1))
    log.warning("this run makes only %d optimizer steps (%d epochs x %d per epoch: %d samples at a global batch "
                "of %d), few to train on; raise trainer.epochs (%d epochs make %d steps) or lower "
                "trainer.batch_size (trainer.min_updates=0 silences this)", total, tcfg.epochs, updates_per_epoch,
                train_size, global_batch, epochs, epochs * updates_per_epoch)
    return True


class _Engine:
    def __init__(self, cfg: DictConfig, tcfg: TrainerConfig, ocfg: OptimConfig, env: DistEnv,
                 model: nn.Module, adapter: TaskAdapter, collate_fn):
        self.cfg, self.tcfg, self.ocfg, self.env = cfg, tcfg, ocfg, env
        # the one place a duck-typed adapter gets the default hooks; the engine then calls them directly
        self.adapter, self.collate_fn = as_task_adapter(adapter), collate_fn
        self.device = env.device
        self._setup_logging()
        self._setup_backends()
        self.amp_dtype = self._amp_dtype()
        # eval_only reads a checkpoint (trainer.resume names a run's, else trainer.checkpoint) and
        # writes nothing into a training run; training resumes trainer.resume or starts fresh
        self.eval_weights = ckpt_io.eval_weights_path(tcfg) if tcfg.eval_only else None
        self.resume_path = None if tcfg.eval_only else ckpt_io.resolve_resume(tcfg.resume, tcfg.run_dir)
        run_dir = self._eval_dir() if tcfg.eval_only else self._run_dir()
        self.run_dir = Path(broadcast_object(str(run_dir), env))
        self.metrics = MetricsWriter(self.run_dir, enabled=env.is_main)
        self.config_dict = self._resolved_config()
        self.sample_name = self.adapter.sample_name
        self.show_bar = show_progress(tcfg.progress, env.is_main)
        self.checkpoint_extra = self._checkpoint_extra()
        if env.is_main and not tcfg.eval_only:
            ckpt_io.remove_stale_temp_files(self.run_dir)

        self.raw_model = model.to(self.device)
        initial = self.eval_weights if tcfg.eval_only else (tcfg.checkpoint if self.resume_path is None else None)
        if initial:
            ckpt_io.load_weights(self.raw_model, initial, strict=tcfg.checkpoint_strict)
        if tcfg.sync_bn and env.distributed:
            self.raw_model = nn.SyncBatchNorm.convert_sync_batchnorm(self.raw_model)
        self.ema = ModelEmaV3(self.raw_model, decay=tcfg.ema_decay, use_warmup=tcfg.ema_warmup) if tcfg.ema else None
        self.ddp: Optional[nn.parallel.DistributedDataParallel] = None
        train_model: nn.Module = self.raw_model
        if env.distributed:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.raw_model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=tcfg.find_unused_parameters)
            train_model = self.ddp
        self.eval_model: nn.Module = self.raw_model
        if tcfg.compile:
            train_model = torch.compile(train_model, mode=tcfg.compile_mode)
            self.eval_model = torch.compile(self.raw_model, mode=tcfg.compile_mode)
        self.train_model = train_model
        # built by fit() from the training set's size (save and restore run only inside it)
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.scheduler = None
        self.scaler: Optional[torch.amp.GradScaler] = None
        self.layout: Optional[Layout] = None
        log.info("run dir %s | device %s | world size %d | amp %s", self.run_dir, self.device, env.world_size,
                 self.amp_dtype or "off")

    # ------------------------------------------------------------------ setup helpers
    def _setup_logging(self) -> None:
        if not logging.getLogger().handlers:  # not under Hydra (which configures logging itself)
            logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
        if not self.env.is_main:
            log.setLevel(logging.WARNING)

    def _setup_backends(self) -> None:
        if self.tcfg.threads:
            torch.set_num_threads(self.tcfg.threads)
        if self.tcfg.tune_allocator and self.device.type == "cpu":
            tune_cpu_allocator()
        if self.tcfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def _amp_dtype(self) -> Optional[torch.dtype]:
        amp = str(self.tcfg.amp).lower()
        if amp in ("auto", "true"):
            return torch.bfloat16 if self.device.type == "cuda" else None
        if amp == "false":
            return None
        if amp not in _AMP_DTYPES:
            raise ValueError(f"trainer.amp={self.tcfg.amp!r}; expected auto, bf16, fp16 or fp32")
        dtype = _AMP_DTYPES[amp]
        if dtype == torch.float16 and self.device.type != "cuda":
            raise ValueError("trainer.amp=fp16 needs CUDA; on CPU use trainer.amp=bf16 or fp32")
        return dtype

    def _run_dir(self) -> Path:
        if self.tcfg.run_dir:
            return Path(self.tcfg.run_dir)
        if self.resume_path is not None:
            return self.resume_path.parent
        try:
            from hydra.core.hydra_config import HydraConfig
            return Path(HydraConfig.get().runtime.output_dir)
        except (ImportError, ValueError):
            return Path("runs") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")

    def _eval_dir(self) -> Path:
        """Where an evaluation writes its config and metrics: trainer.run_dir (or Hydra's output dir)
        unless that already holds a run, whose files are then left alone: ``<dir>/eval/<time>``."""
        base = Path(self.tcfg.run_dir) if self.tcfg.run_dir else self._run_dir()
        taken = [n for n in ("config.yaml", METRICS_JSONL, ckpt_io.LAST, ckpt_io.BEST) if (base / n).exists()]
        if not taken:
            return base
        out = base / "eval" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        log.info("%s holds a run (%s): this evaluation writes to %s instead", base, ", ".join(taken), out)
        return out

    def _write_config(self) -> None:
        if self.env.is_main:
            text = OmegaConf.to_yaml(OmegaConf.create(self.config_dict))
            ckpt_io.atomic_write_text(text, self.run_dir / "config.yaml")

    def _checkpoint_extra(self) -> dict[str, Any]:
        extra = dict(self.adapter.checkpoint_extra or {})
        clash = sorted(set(extra) & _CHECKPOINT_KEYS)
        if clash:
            raise ValueError(f"adapter.checkpoint_extra uses keys the engine writes itself: {clash}")
        return extra

    def _resolved_config(self) -> dict:
        try:
            return OmegaConf.to_container(self.cfg, resolve=True)
        except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra app: keep it unresolved
            return OmegaConf.to_container(self.cfg, resolve=False)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: Any) -> Any:
        return self.adapter.to_device(batch, self.device)

    def _loader(self, dataset: Dataset, batch_size: int, sampler, drop_last: bool, seed: int) -> DataLoader:
        tcfg = self.tcfg
        pin = tcfg.pin_memory if tcfg.pin_memory is not None else self.device.type == "cuda"
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          collate_fn=self.collate_fn, num_workers=tcfg.num_workers, pin_memory=pin,
                          persistent_workers=tcfg.num_workers > 0,
                          # a private generator: creating an iterator must not consume the global RNG,
                          # or a resumed run's random stream would diverge from the uninterrupted one
                          generator=torch.Generator().manual_seed(seed))

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        if isinstance(dataset, IterableDataset):
            raise TypeError("evaluation sets must be map-style datasets (with __len__ and __getitem__)")
        bs = self.tcfg.eval_batch_size if self.tcfg.eval_batch_size is not None else 2 * self.tcfg.batch_size
        return self._loader(dataset, bs, ShardedSampler(len(dataset), self.env.world_size, self.env.rank),
                            drop_last=False, seed=self.tcfg.seed)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, desc: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        net = self._inference_copy(model)
        evaluator = self.adapter.make_evaluator()
        # loading must not move the training-time random stream (whatever the number of workers)
        batches = rng_guarded(loader) if self.tcfg.num_workers == 0 else loader
        for batch in progress_bar(batches, total=len(loader), initial=0, desc=desc, enabled=self.show_bar):
            batch = self._to_device(batch)
            with self._autocast():
                outputs = self.adapter.forward(net, batch)
            evaluator.update(outputs, batch)
        model.train(was_training)
        return {k: float(v) for k, v in evaluator.compute(all_reduce_sum(evaluator.state(), self.env)).items()}

    def _inference_copy(self, model: nn.Module) -> nn.Module:
        """The model as evaluated: on the CPU in fp32, a bixt.accel copy taken now (so it holds
        the current weights); compiled models and other devices or dtypes are evaluated as they are."""
        compiled = self.tcfg.compile and model is self.eval_model
        if self.tcfg.accel and self.device.type == "cpu" and self.amp_dtype is None and not compiled:
            return accel.optimize(model)
        return model

    def evaluate_all(self, loader: DataLoader, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/{k}": v for k, v in self.evaluate(self.eval_model, loader, prefix).items()}
        if self.ema is not None:
            out.update({f"{prefix}_ema/{k}": v for k, v in self.evaluate(self.ema.module, loader, f"{prefix} ema").items()})
        return out

    # ------------------------------------------------------------------ checkpoints
    def save(self, epoch: int, step_in_epoch: int, epoch_sums: dict[str, float], is_best: bool) -> None:
        # collective: every rank contributes its RNG state and its partial epoch sums
        per_rank = gather_objects((capture_rng_state(), dict(epoch_sums)), self.env)
        if self.env.is_main:
            state = {
                "state_dict": self.raw_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": self.global_step,
                "epoch_sums": [sums for _, sums in per_rank],
                "best": self.best,
                "rng": [rng for rng, _ in per_rank],
                "world_size": self.env.world_size,
                "config": self.config_dict,
                "arch": getattr(self.raw_model, "pretrained_cfg", {}).get("architecture"),
                "layout": self.layout.as_dict(),
                **self.checkpoint_extra,
            }
            if self.ema is not None:
                state["state_dict_ema"] = self.ema.module.state_dict()
            last = self.run_dir / ckpt_io.LAST
            ckpt_io.atomic_save(state, last)
            if is_best:
                ckpt_io.atomic_save(state, self.run_dir / ckpt_io.BEST)
        barrier(self.env)

    def _restore(self, path: Path, ckpt: dict[str, Any], changes: list[str]) -> None:
        """Load the states of ``ckpt``; the lr schedule is this run's (built from its config and
        placed by the position: see :mod:`bixt.engine.resume`), so it is not loaded."""
        self.raw_model.load_state_dict(ckpt["state_dict"])
        load_optimizer_state(self.optimizer, ckpt["optimizer"], path, changes)
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if "state_dict_ema" in ckpt:
                self.ema.module.load_state_dict(ckpt["state_dict_ema"])
            else:
                log.warning("%s has no EMA weights; the EMA restarts from the current weights", path)
                self.ema.module.load_state_dict(ckpt["state_dict"])
        self.global_step = int(ckpt["global_step"])
        self.best = ckpt.get("best")
        rng = ckpt.get("rng") or []
        if len(rng) == self.env.world_size:
            restore_rng_state(rng[self.env.rank])
        else:
            log.warning("%s was written by %d process(es), this run has %d: random streams are re-seeded, "
                        "so the continuation is not bit-identical", path, len(rng), self.env.world_size)
            seed_everything(self.tcfg.seed + self.env.rank + self.global_step)
        log.info("resumed from %s at epoch %d, step %d of the epoch (global step %d)", path, ckpt["epoch"],
                 ckpt["step_in_epoch"], self.global_step)

    # ------------------------------------------------------------------ main entry
    def fit(self, train_set: Optional[Dataset], val_set: Dataset, test_sets: dict[str, Dataset]) -> dict[str, float]:
        tcfg, env = self.tcfg, self.env
        val_loader = self._eval_loader(val_set)
        if tcfg.eval_only:
            if self.eval_weights is None:
                log.warning("trainer.eval_only without trainer.checkpoint (or trainer.resume): evaluating the "
                            "model as built")
            self._write_config()
            record: dict[str, Any] = {"mode": "eval"}
            if self.eval_weights is not None:
                record["checkpoint"] = str(self.eval_weights)
            record.update(self.evaluate_all(val_loader, "val"))
            for name, ds in test_sets.items():
                record.update(self.evaluate_all(self._eval_loader(ds), f"test_{name}"))
            self.metrics.write(record)
            log.info("eval | %s", format_metrics(record))
            return {k: v for k, v in record.items() if isinstance(v, (int, float))}

        if train_set is None:
            raise ValueError("run() needs a train_set unless trainer.eval_only=true")
        if isinstance(train_set, IterableDataset):
            raise TypeError("train_set must be a map-style dataset (with __len__ and __getitem__)")
        sampler = ResumableSampler(train_set, env.world_size, env.rank, seed=tcfg.seed)
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        batch_size = effective_batch(len(train_set), env.world_size, tcfg.batch_size)
        if batch_size < tcfg.batch_size:  # a tiny data set: one (smaller) batch per epoch beats none
            log.warning("the training set has %d samples per process, fewer than trainer.batch_size=%d: "
                        "training with batches of %d", sampler.num_samples, tcfg.batch_size, batch_size)
        train_loader = self._loader(SeededDataset(train_set, tcfg.seed), batch_size, sampler,
                                    drop_last=True, seed=tcfg.seed + env.rank)
        global_batch = batch_size * env.world_size * tcfg.accumulate
        lr = scaled_lr(self.ocfg, global_batch)
        self.layout = Layout(train_size=len(train_set), world_size=env.world_size, batch_size=batch_size,
                             accumulate=tcfg.accumulate, epochs=tcfg.epochs, lr=lr, optimizer=self.ocfg.name)
        batches_per_epoch, updates_per_epoch = self.layout.batches_per_epoch, self.layout.updates_per_epoch
        self.optimizer = build_optimizer(self.raw_model, self.ocfg, lr)
        self.scheduler = build_scheduler(self.optimizer, self.ocfg, tcfg.epochs, updates_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.global_step, self.best = 0, None
        start_epoch, start_step, epoch_stats = 0, 0, None
        if self.resume_path is not None:
            ckpt = ckpt_io.load_training_checkpoint(self.resume_path)
            plan = plan_resume(ckpt, self.resume_path, self.layout, self.ocfg, env.rank)
            self._restore(self.resume_path, ckpt, plan.changes)
            start_epoch, start_step, epoch_stats = plan.epoch, plan.step_in_epoch, plan.epoch_sums
            self.metrics.truncate_after(start_epoch)
        else:
            seed_everything(tcfg.seed + env.rank)
        self._write_config()  # only now: a refused resume leaves the run's config.yaml as it was
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        log.info("%s parameters | %d train / %d val %s | global batch %d | lr %.3g | %d updates per epoch",
                 f"{n_params:,}", len(train_set), len(val_set), self.sample_name, global_batch, lr, updates_per_epoch)
        warn_if_few_updates(tcfg, updates_per_epoch, len(train_set), global_batch)

        record: dict[str, Any] = {}
        if start_epoch >= tcfg.epochs:
            log.info("the resumed run already finished its %d epochs; raise trainer.epochs to train on", tcfg.epochs)
        for epoch in range(start_epoch, tcfg.epochs):
            if tcfg.max_steps is not None and self.global_step >= tcfg.max_steps:
                break
            skip_steps = start_step if epoch == start_epoch else 0
            sampler.set_epoch(epoch)
            sampler.set_start(skip_steps * tcfg.accumulate * batch_size)
            train_stats, step_in_epoch, sums = self.train_epoch(
                train_loader, epoch, skip_steps, batches_per_epoch, updates_per_epoch,
                epoch_stats if epoch == start_epoch else None)
            finished = step_in_epoch >= updates_per_epoch
            record = {"epoch": epoch + 1, "step": self.global_step, **train_stats}
            is_best = False
            if (epoch + 1) % tcfg.eval_every == 0 or epoch + 1 == tcfg.epochs or not finished:
                record.update(self.evaluate_all(val_loader, "val"))
                is_best = self._update_best(record) and tcfg.save_best
            self.metrics.write(record)
            log.info("epoch %d/%d | %s", epoch + 1, tcfg.epochs, format_metrics({k: v for k, v in record.items() if k != "epoch"}))
            if finished:
                self.save(epoch + 1, 0, {}, is_best)
            else:  # stopped by max_steps inside the epoch: keep the position so it can be resumed
                self.save(epoch, step_in_epoch, sums, is_best)

        final = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        if self.best is not None:
            final[f"best/{self.adapter.main_metric}"] = self.best
        if test_sets:
            final.update(self._test(test_sets))
        return final

    def _update_best(self, record: dict[str, Any]) -> bool:
        key = f"val/{self.adapter.main_metric}"
        if key not in record:
            raise KeyError(f"adapter.main_metric={self.adapter.main_metric!r} is not among the evaluator's "
                           f"metrics {sorted(k[4:] for k in record if k.startswith('val/'))}")
        value = record[key]
        maximize = self.adapter.main_metric_mode == "max"
        if self.best is None or (value > self.best if maximize else value < self.best):
            self.best = value
            return True
        return False

    def _test(self, test_sets: dict[str, Dataset]) -> dict[str, float]:
        best_path = self.run_dir / ckpt_io.BEST
        # self.best is set once this run (or the one it resumes) has written best.pth: a file left
        # in the directory by an earlier run is never picked up
        if self.tcfg.test_with == "best" and self.tcfg.save_best and self.best is not None and best_path.is_file():
            state = ckpt_io.load_training_checkpoint(best_path)
            self.raw_model.load_state_dict(state["state_dict"])
            if self.ema is not None and "state_dict_ema" in state:
                self.ema.module.load_state_dict(state["state_dict_ema"])
            log.info("test sets evaluated with the best checkpoint (epoch %d)", state["epoch"])
        elif self.tcfg.test_with == "best":
            log.info("test sets evaluated with the last weights (no best checkpoint from this run)")
        out: dict[str, Any] = {}
        for name, ds in test_sets.items():
            out.update(self.evaluate_all(self._eval_loader(ds), f"test_{name}"))
        self.metrics.write({"mode": f"test ({self.tcfg.test_with})", **out})
        log.info("test | %s", format_metrics(out))
        return out

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, loader: DataLoader, epoch: int, skip_steps: int, batches_per_epoch: int,
                    updates_per_epoch: int, resumed_sums: Optional[dict[str, float]]
                    ) -> tuple[dict[str, Any], int, dict[str, float]]:
        """One (possibly resumed, possibly truncated by max_steps) epoch; returns the epoch's stats,
        the optimizer steps done in it and its running sums (for a mid-epoch checkpoint)."""
        tcfg, acc = self.tcfg, self.tcfg.accumulate
        self.train_model.train()
        # the schedule's position is where the run is in epochs, in this run's layout (equal to
        # global_step unless a resume changed the batch size)
        if self.scheduler is not None:
            self.scheduler.step(epoch)
            self.scheduler.step_update(num_updates=epoch * updates_per_epoch + skip_steps)
        # Running sums stay on the device; reading them back (a host sync) happens only every
        # `sync_every` updates on accelerators, every update on CPU where it is free. The sums are
        # carried through mid-epoch checkpoints so a resumed epoch reports what the straight one does.
        resumed_sums = resumed_sums or {}
        sums_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        loss_sum = torch.tensor(resumed_sums.get("loss", 0.0), dtype=sums_dtype, device=self.device)
        epoch_n = int(resumed_sums.get("samples", 0))
        window_loss = torch.zeros((), dtype=sums_dtype, device=self.device)
        window_n, window_t0 = 0, time.perf_counter()
        sync_every = 1 if self.device.type == "cpu" else 10
        epoch_t0, samples_seen = time.perf_counter(), 0
        step_in_epoch = skip_steps
        first = skip_steps * acc
        # main-process loading seeds the global RNGs per sample: shield the training stream from it
        batches = rng_guarded(loader) if tcfg.num_workers == 0 else loader
        bar = progress_bar(batches, total=batches_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{tcfg.epochs}",
                           enabled=self.show_bar)
        for batch_idx, batch in enumerate(bar, start=first):
            group_start = (batch_idx // acc) * acc
            group_len = min(acc, batches_per_epoch - group_start)  # the last group of an epoch may be short
            is_update = batch_idx + 1 == group_start + group_len
            batch = self._to_device(batch)
            batch = self.adapter.train_batch_transform(batch)
            sync = self.ddp.no_sync() if (self.ddp is not None and not is_update) else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    outputs = self.adapter.forward(self.train_model, batch)
                    loss = self.adapter.loss(outputs, batch)
                self.scaler.scale(loss / group_len).backward()
            n = self.adapter.batch_size(batch)
            weighted = loss.detach().to(sums_dtype) * n
            loss_sum += weighted
            window_loss += weighted
            epoch_n += n
            window_n += n
            samples_seen += n
            if not is_update:
                continue

            if tcfg.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
                dispatch_clip_grad(self.raw_model.parameters(), tcfg.clip_grad, mode=tcfg.clip_mode)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_step += 1
            step_in_epoch += 1
            if self.ema is not None:
                self.ema.update(self.raw_model, step=self.global_step)
            if self.scheduler is not None:
                self.scheduler.step_update(num_updates=epoch * updates_per_epoch + step_in_epoch)

            save_now = bool(tcfg.ckpt_every_steps) and self.global_step % tcfg.ckpt_every_steps == 0 \
                and step_in_epoch < updates_per_epoch
            log_now = bool(tcfg.log_every) and step_in_epoch % tcfg.log_every == 0
            if log_now or save_now or step_in_epoch % sync_every == 0:
                window_avg = window_loss.item() / max(window_n, 1)
                if not math.isfinite(window_avg):
                    raise FloatingPointError(
                        f"training loss is {window_avg} at epoch {epoch + 1}, step {step_in_epoch}: lower optim.lr, "
                        "set trainer.clip_grad, or check the data for NaN/inf")
                elapsed = time.perf_counter() - window_t0
                info = {"loss": window_avg, "lr": self._lr(),
                        f"{self.sample_name}/s": window_n * self.env.world_size / max(elapsed, 1e-9)}
                if self.show_bar:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in info.items()}, refresh=False)
                elif log_now:
                    log.info("epoch %d step %d/%d | %s", epoch + 1, step_in_epoch, updates_per_epoch,
                             format_metrics(info))
                if log_now or self.show_bar:
                    window_loss.zero_()
                    window_n, window_t0 = 0, time.perf_counter()
            if save_now:
                self.save(epoch, step_in_epoch, {"loss": loss_sum.item(), "samples": epoch_n}, is_best=False)
            if tcfg.max_steps is not None and self.global_step >= tcfg.max_steps:
                break
        bar.close()
        elapsed = time.perf_counter() - epoch_t0
        sums = {"loss": loss_sum.item(), "samples": epoch_n}
        if not math.isfinite(sums["loss"]):
            raise FloatingPointError(f"training loss is {sums['loss']} in epoch {epoch + 1}: lower optim.lr, "
                                     "set trainer.clip_grad, or check the data for NaN/inf")
        reduced = all_reduce_sum({k: torch.tensor(float(v), dtype=torch.float64) for k, v in sums.items()}, self.env)
        stats: dict[str, Any] = {
            "lr": self._lr(),
            "train/loss": float(reduced["loss"] / max(float(reduced["samples"]), 1.0)),
            f"train/{self.sample_name}_per_s": samples_seen * self.env.world_size / max(elapsed, 1e-9),
            "time_s": elapsed,
        }
        return stats, step_in_epoch, sums

    def _lr(self) -> float:
        return max(g["lr"] for g in self.optimizer.param_groups)
