"""The training / evaluation loop behind :func:`bixt.engine.run` (see the package docstring)."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from bixt.data.task_data import TaskData
from bixt.engine import checkpointing as ckpt_io
from bixt import accel
from bixt.flops import count_call_flops, describe_counts
from bixt.engine.config import OptimConfig, TrainerConfig, optim_config, trainer_config
from bixt.engine.distributed import (DistEnv, all_reduce_sum, barrier, broadcast_object, cleanup,
                                     gather_objects, init_distributed)
from bixt.engine.optim import build_optimizer, build_scheduler, scaled_lr
from bixt.engine.precision import autocast_dtype
from bixt.engine.reporting import (LossMeter, MetricsWriter, checkpoint_position, format_metrics, progress_bar,
                                   show_progress)
from bixt.engine.resume import Layout, effective_batch, load_optimizer_state, plan_resume
from bixt.engine.reproducibility import (ResumableSampler, SeededDataset, ShardedSampler, capture_rng_state,
                                         restore_rng_state, rng_guarded, seed_everything)
from bixt.engine.run_dir import RunDirError, RunDirLock, base_dir, claim_eval_dir, refuse_overwrite
from bixt.engine.task import TaskAdapter, check_adapter
from bixt.rng import host_rngs_restored
from bixt.runtime import tune_cpu_allocator

log = logging.getLogger("bixt.engine")

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}


def run(cfg: DictConfig, model: nn.Module, adapter: TaskAdapter, data: TaskData, *,
        start: Optional[ckpt_io.StartCheckpoint] = None) -> dict[str, float]:
    """Train ``model`` on ``data.train`` (or only evaluate it), evaluating on ``data.val`` and, at
    the end, on each of ``data.tests``. Returns the final metrics as a flat ``{name: float}`` dict.
    ``start``: what :func:`~bixt.engine.checkpointing.start_checkpoint` read for this ``cfg`` (the
    engine then reads no file twice); ``None``: the engine resolves and reads it itself."""
    tcfg, ocfg = trainer_config(cfg), optim_config(cfg)
    start = _checked_start(tcfg, start)
    env = init_distributed(tcfg.device)
    try:
        with process_settings_restored():
            return _Engine(cfg, tcfg, ocfg, env, model, adapter, data.collate_fn, start).fit(data.train, data.val,
                                                                                             data.tests)
    finally:
        cleanup(env)


def _checked_start(tcfg: TrainerConfig, start: Optional[ckpt_io.StartCheckpoint]) -> Optional[ckpt_io.StartCheckpoint]:
    """The start checkpoint of this config: ``start`` when it is the one the config names, else read now."""
    if start is None:
        return ckpt_io.start_checkpoint(tcfg)
    path, kind = ckpt_io.resolve_start(tcfg)
    if path is None or kind != start.kind or Path(start.path).resolve() != path.resolve():
        named = f"{kind} {path}" if path is not None else "no start checkpoint"
        raise ValueError(f"run(start=...) holds the {start.kind} checkpoint {start.path}, but cfg.trainer names "
                         f"{named}: pass start=bixt.engine.start_checkpoint(cfg) of the config given to run")
    return start


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


def use_line(run_dir: Path, cfg: DictConfig) -> str:
    """A finished run's last log line: the commands that use it (for an image classifier, the one
    that writes its timm hub folder, see :mod:`bixt.export`)."""
    line = f"done | predict: python -m bixt.predict {run_dir} INPUT..."
    if OmegaConf.select(cfg, "model._target_") == "bixt.models.factory.image_classifier":
        line += f" | timm folder: python -m bixt.export {run_dir} --format timm --out {Path(run_dir) / 'timm'}"
    return line


class _Engine:
    """One run: __init__ checks the request and prepares the model (nothing is written yet);
    :meth:`fit` claims the run directory, then evaluates or trains."""

    def __init__(self, cfg: DictConfig, tcfg: TrainerConfig, ocfg: OptimConfig, env: DistEnv,
                 model: nn.Module, adapter: TaskAdapter, collate_fn, start: Optional[ckpt_io.StartCheckpoint]):
        self.cfg, self.tcfg, self.ocfg, self.env = cfg, tcfg, ocfg, env
        self.adapter, self.collate_fn = check_adapter(adapter), collate_fn
        self.device = env.device
        self._setup_process()
        self.amp_dtype, why = autocast_dtype(tcfg.amp, self.device)
        log.info("amp=%s (%s)", _DTYPE_NAMES[self.amp_dtype], why)
        self._setup_sources(start)
        self.config_dict = self._resolved_config()
        self.sample_name = self.adapter.sample_name
        self.show_bar = show_progress(tcfg.progress, env.is_main)
        self.checkpoint_extra = self._checkpoint_extra()
        self._setup_model(model)
        # the claimed run directory: set by fit()
        self.run_dir: Optional[Path] = None
        self.metrics: Optional[MetricsWriter] = None
        # the training state: built by _setup_training() from the training set's size
        self.sampler: Optional[ResumableSampler] = None
        self.train_loader: Optional[DataLoader] = None
        self.layout: Optional[Layout] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.scheduler = None
        self.scaler: Optional[torch.amp.GradScaler] = None
        self.global_step, self.best = 0, None
        self.epoch, self.step_in_epoch = 0, 0  # the position of the loop (epoch from 0, updates into it)

    # ------------------------------------------------------------------ setup
    def _setup_process(self) -> None:
        """Logging and the process-wide torch settings (put back by process_settings_restored)."""
        if not logging.getLogger().handlers:  # not under Hydra (which configures logging itself)
            logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
        if not self.env.is_main:
            log.setLevel(logging.WARNING)
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

    def _setup_sources(self, start: Optional[ckpt_io.StartCheckpoint]) -> None:
        """What the run reads and where it goes. ``start`` (resolved by
        :func:`~bixt.engine.checkpointing.resolve_start` and read once) is what eval_only evaluates or
        training resumes / starts from; eval_only writes nothing into a training run, and training
        never writes over another run."""
        tcfg = self.tcfg
        self.start = start
        self.eval_weights = start.path if tcfg.eval_only and start is not None else None
        self.resume_path = start.path if start is not None and start.kind == ckpt_io.RESUME else None
        # a resume's contents: restored in _start_position, then dropped (no second copy in memory)
        self.resume_state = start.take_contents() if self.resume_path is not None else None
        self.base_dir = base_dir(tcfg, self.resume_path if not tcfg.eval_only else None)
        if not tcfg.eval_only:
            # resume=auto with nothing to resume starts fresh where it was pointed
            asked_to_resume = self.resume_path is not None or str(tcfg.resume).lower() == "auto"
            self._on_main(lambda: refuse_overwrite(self.base_dir, resuming=asked_to_resume))

    def _setup_model(self, model: nn.Module) -> None:
        """Initial weights, then the wrappers: SyncBatchNorm, EMA, DDP, torch.compile."""
        tcfg, env = self.tcfg, self.env
        self.raw_model = model.to(self.device)
        start = self.start
        if start is not None and start.kind != ckpt_io.RESUME and start.report is None:  # else the task loaded it
            start.load_into(self.raw_model, strict=tcfg.checkpoint_strict)
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

    def _on_main(self, decide: Callable[[], Any]) -> Any:
        """``decide()`` on rank 0, its result (or the RunDirError it raised) on every rank: all
        ranks stop together instead of waiting for rank 0 in vain, and no rank sees the directory
        after another one wrote to it."""
        result, error = None, None
        if self.env.is_main:
            try:
                result = decide()
            except RunDirError as err:
                error = err.message
        error = broadcast_object(error, self.env)
        if error is not None:
            raise RunDirError(error)
        return result

    def _claim(self) -> RunDirLock:
        if self.tcfg.eval_only:
            return claim_eval_dir(self.base_dir)
        lock = RunDirLock(self.base_dir)
        lock.acquire()
        return lock

    @contextlib.contextmanager
    def _claimed_run_dir(self) -> Iterator[None]:
        """The run directory, locked by rank 0 for the run's duration; every rank gets its path."""
        lock = self._on_main(self._claim)
        try:
            self.run_dir = Path(broadcast_object(str(lock.directory) if lock else None, self.env))
            self.metrics = MetricsWriter(self.run_dir, enabled=self.env.is_main)
            if self.env.is_main and not self.tcfg.eval_only:
                ckpt_io.remove_stale_temp_files(self.run_dir)  # the lock says no write is in progress
            log.info("run dir %s | device %s | world size %d", self.run_dir, self.device, self.env.world_size)
            yield
        finally:
            if lock is not None:
                lock.release()

    def _write_config(self) -> None:
        if self.env.is_main:
            text = OmegaConf.to_yaml(OmegaConf.create(self.config_dict))
            ckpt_io.atomic_write_text(text, self.run_dir / "config.yaml")

    def _checkpoint_extra(self) -> dict[str, Any]:
        extra = dict(self.adapter.checkpoint_extra or {})
        clash = sorted(set(extra) & ckpt_io.ENGINE_KEYS)
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
        log.info("resumed from %s at %s (global step %d)", path,
                 checkpoint_position(int(ckpt["epoch"]), int(ckpt["step_in_epoch"])), self.global_step)

    # ------------------------------------------------------------------ main entry
    def fit(self, train_set: Optional[Dataset], val_set: Dataset, test_sets: dict[str, Dataset]) -> dict[str, float]:
        val_loader = self._eval_loader(val_set)
        if not self.tcfg.eval_only:
            self._setup_training(train_set)  # a bad training set fails before the run directory is touched
        with self._claimed_run_dir():
            if self.tcfg.eval_only:
                return self._evaluate_only(val_loader, test_sets)
            return self._train(val_loader, test_sets)

    def _evaluate_only(self, val_loader: DataLoader, test_sets: dict[str, Dataset]) -> dict[str, float]:
        if self.eval_weights is None:
            log.warning("trainer.eval_only without trainer.checkpoint (or trainer.resume): evaluating the "
                        "model as built")
        self._write_config()
        log.info("%s | %d val %s", self._model_header(val_loader.dataset), len(val_loader.dataset), self.sample_name)
        record: dict[str, Any] = {"mode": "eval"}
        if self.eval_weights is not None:
            record["checkpoint"] = str(self.eval_weights)
        record.update(self.evaluate_all(val_loader, "val"))
        for name, ds in test_sets.items():
            record.update(self.evaluate_all(self._eval_loader(ds), f"test_{name}"))
        self.metrics.write(record)
        log.info("eval | %s", format_metrics(record))
        return {k: v for k, v in record.items() if isinstance(v, (int, float))}

    def _train(self, val_loader: DataLoader, test_sets: dict[str, Dataset]) -> dict[str, float]:
        train_size = self.layout.train_size
        start_epoch, start_step, epoch_sums = self._start_position()
        self._write_config()  # only now: a refused resume leaves the run's config.yaml as it was
        log.info("%s | %d train / %d val %s | global batch %d | lr %.3g | %d updates per epoch",
                 self._model_header(val_loader.dataset), train_size, len(val_loader.dataset), self.sample_name,
                 self.layout.samples_per_update, self.layout.lr, self.layout.updates_per_epoch)
        warn_if_few_updates(self.tcfg, self.layout.updates_per_epoch, train_size, self.layout.samples_per_update)

        record: dict[str, Any] = {}
        if start_epoch >= self.tcfg.epochs:
            log.info("the resumed run already finished its %d epochs; raise trainer.epochs to train on", self.tcfg.epochs)
        for epoch in range(start_epoch, self.tcfg.epochs):
            if self._max_steps_reached():
                break
            resumed = epoch == start_epoch
            stats, sums = self.train_epoch(epoch, start_step if resumed else 0, epoch_sums if resumed else None)
            record = self._end_epoch(stats, sums, val_loader)

        final = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        if self.best is not None:
            final[f"best/{self.adapter.main_metric}"] = self.best
        if test_sets:
            final.update(self._test(test_sets))
        if self.env.is_main:
            log.info(use_line(self.run_dir, self.cfg))
        return final

    def _model_header(self, dataset: Dataset) -> str:
        """The model's parameters and forward FLOPs per sample, counted on the first validation
        sample (or why they were not: a header never stops a run)."""
        if not self.env.is_main:
            return ""  # only rank 0 logs
        try:
            flops, why = self._flops_per_sample(dataset), ""
        except Exception as err:  # noqa: BLE001
            flops, why = None, f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
        return describe_counts(self.raw_model, flops, why)

    def _flops_per_sample(self, dataset: Dataset) -> float:
        """One sample through the adapter's forward in eval mode, with the model's mode and every
        random stream put back: counting changes neither the weights nor the run's results."""
        if len(dataset) == 0:
            raise ValueError("the validation set is empty")
        model, was_training = self.raw_model, self.raw_model.training
        devices = [self.device] if self.device.type == "cuda" else []
        model.eval()
        try:
            with host_rngs_restored(), torch.random.fork_rng(devices=devices):
                batch = self._to_device((self.collate_fn or default_collate)([dataset[0]]))
                return count_call_flops(lambda: self.adapter.forward(model, batch)) / self.adapter.batch_size(batch)
        finally:
            model.train(was_training)

    def _setup_training(self, train_set: Optional[Dataset]) -> None:
        """Sampler, loader, layout, optimizer, schedule and grad scaler for ``train_set``."""
        tcfg, env = self.tcfg, self.env
        if train_set is None:
            raise ValueError("run() needs a train_set unless trainer.eval_only=true")
        if isinstance(train_set, IterableDataset):
            raise TypeError("train_set must be a map-style dataset (with __len__ and __getitem__)")
        self.sampler = ResumableSampler(train_set, env.world_size, env.rank, seed=tcfg.seed)
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        batch_size = effective_batch(len(train_set), env.world_size, tcfg.batch_size)
        if batch_size < tcfg.batch_size:  # a tiny data set: one (smaller) batch per epoch beats none
            log.warning("the training set has %d samples per process, fewer than trainer.batch_size=%d: "
                        "training with batches of %d", self.sampler.num_samples, tcfg.batch_size, batch_size)
        self.train_loader = self._loader(SeededDataset(train_set, tcfg.seed), batch_size, self.sampler,
                                         drop_last=True, seed=tcfg.seed + env.rank)
        lr = scaled_lr(self.ocfg, batch_size * env.world_size * tcfg.accumulate)
        self.layout = Layout(train_size=len(train_set), world_size=env.world_size, batch_size=batch_size,
                             accumulate=tcfg.accumulate, epochs=tcfg.epochs, lr=lr, optimizer=self.ocfg.name)
        self.optimizer = build_optimizer(self.raw_model, self.ocfg, lr)
        self.scheduler = build_scheduler(self.optimizer, self.ocfg, tcfg.epochs, self.layout.updates_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def _start_position(self) -> tuple[int, int, Optional[dict[str, float]]]:
        """(epoch, update within it, the epoch's partial sums) to start from: the resumed checkpoint's
        position with its states restored, or the beginning of a fresh run."""
        if self.resume_path is None:
            seed_everything(self.tcfg.seed + self.env.rank)
            if self.metrics.jsonl.is_file():  # resume=auto found no checkpoint: the old rows are not this run's
                self.metrics.truncate_after(0)
            return 0, 0, None
        ckpt, self.resume_state = self.resume_state, None
        plan = plan_resume(ckpt, self.resume_path, self.layout, self.ocfg, self.env.rank)
        self._restore(self.resume_path, ckpt, plan.changes)
        self.metrics.truncate_after(plan.epoch)
        return plan.epoch, plan.step_in_epoch, plan.epoch_sums

    def _end_epoch(self, stats: dict[str, Any], sums: dict[str, float], val_loader: DataLoader) -> dict[str, Any]:
        """Evaluate (when due, and always after a truncated epoch), record, checkpoint."""
        tcfg, epoch = self.tcfg, self.epoch
        finished = self.step_in_epoch >= self.layout.updates_per_epoch
        record = {"epoch": epoch + 1, "step": self.global_step, **stats}
        is_best = False
        if (epoch + 1) % tcfg.eval_every == 0 or epoch + 1 == tcfg.epochs or not finished:
            record.update(self.evaluate_all(val_loader, "val"))
            is_best = self._update_best(record) and tcfg.save_best
        self.metrics.write(record)
        log.info("epoch %d/%d | %s", epoch + 1, tcfg.epochs, format_metrics({k: v for k, v in record.items() if k != "epoch"}))
        if finished:
            self.save(epoch + 1, 0, {}, is_best)
        else:  # stopped by max_steps inside the epoch: keep the position so it can be resumed
            self.save(epoch, self.step_in_epoch, sums, is_best)
        return record

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
            log.info("test sets evaluated with the best checkpoint (%s)",
                     checkpoint_position(int(state["epoch"]), int(state.get("step_in_epoch", 0))))
        elif self.tcfg.test_with == "best":
            log.info("test sets evaluated with the last weights (no best checkpoint from this run)")
        out: dict[str, Any] = {}
        for name, ds in test_sets.items():
            out.update(self.evaluate_all(self._eval_loader(ds), f"test_{name}"))
        self.metrics.write({"mode": f"test ({self.tcfg.test_with})", **out})
        log.info("test | %s", format_metrics(out))
        return out

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int, skip_steps: int, resumed_sums: Optional[dict[str, float]]
                    ) -> tuple[dict[str, Any], dict[str, float]]:
        """One (possibly resumed, possibly truncated by max_steps) epoch, from update ``skip_steps``;
        returns its stats and its running sums (for a mid-epoch checkpoint). Leaves
        ``self.step_in_epoch`` at the updates done in it."""
        acc = self.tcfg.accumulate
        self.epoch, self.step_in_epoch = epoch, skip_steps
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(skip_steps * acc * self.layout.batch_size)
        self.train_model.train()
        self._place_schedule(skip_steps)
        meter = LossMeter(self.device, resumed_sums)
        first = skip_steps * acc
        # main-process loading seeds the global RNGs per sample: shield the training stream from it
        batches = rng_guarded(self.train_loader) if self.tcfg.num_workers == 0 else self.train_loader
        bar = progress_bar(batches, total=self.layout.batches_per_epoch, initial=first,
                           desc=f"epoch {epoch + 1}/{self.tcfg.epochs}", enabled=self.show_bar)
        for batch_idx, batch in enumerate(bar, start=first):
            group_len, is_update = self._accumulation_group(batch_idx)
            meter.add(*self._forward_backward(batch, group_len, is_update))
            if not is_update:
                continue
            self._optimizer_step()
            save_now = self._mid_epoch_save_due()
            self._report_progress(meter, bar, force=save_now)
            if save_now:
                self.save(epoch, self.step_in_epoch, meter.sums(), is_best=False)
            if self._max_steps_reached():
                break
        bar.close()
        return self._epoch_stats(meter), meter.sums()

    def _place_schedule(self, skip_steps: int) -> None:
        """The schedule's position is where the run is in epochs, in this run's layout (equal to
        global_step unless a resume changed the batch size)."""
        if self.scheduler is not None:
            self.scheduler.step(self.epoch)
            self.scheduler.step_update(num_updates=self.epoch * self.layout.updates_per_epoch + skip_steps)

    def _accumulation_group(self, batch_idx: int) -> tuple[int, bool]:
        """The number of micro-batches in ``batch_idx``'s update (the last of an epoch may be short)
        and whether ``batch_idx`` completes it."""
        acc = self.tcfg.accumulate
        group_start = (batch_idx // acc) * acc
        group_len = min(acc, self.layout.batches_per_epoch - group_start)
        return group_len, batch_idx + 1 == group_start + group_len

    def _forward_backward(self, batch: Any, group_len: int, is_update: bool) -> tuple[torch.Tensor, int]:
        """Gradients of one micro-batch (DDP syncs them only on the update's last); its loss and size."""
        batch = self.adapter.train_batch_transform(self._to_device(batch))
        sync = self.ddp.no_sync() if (self.ddp is not None and not is_update) else contextlib.nullcontext()
        with sync:
            with self._autocast():
                outputs = self.adapter.forward(self.train_model, batch)
                loss = self.adapter.loss(outputs, batch)
            self.scaler.scale(loss / group_len).backward()
        return loss, self.adapter.batch_size(batch)

    def _optimizer_step(self) -> None:
        """Clip, step, zero the gradients; then the EMA and the schedule follow the new position."""
        if self.tcfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self.raw_model.parameters(), self.tcfg.clip_grad, mode=self.tcfg.clip_mode)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.step_in_epoch += 1
        if self.ema is not None:
            self.ema.update(self.raw_model, step=self.global_step)
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.epoch * self.layout.updates_per_epoch + self.step_in_epoch)

    def _mid_epoch_save_due(self) -> bool:
        every = self.tcfg.ckpt_every_steps
        return bool(every) and self.global_step % every == 0 and self.step_in_epoch < self.layout.updates_per_epoch

    def _max_steps_reached(self) -> bool:
        return self.tcfg.max_steps is not None and self.global_step >= self.tcfg.max_steps

    def _report_progress(self, meter: LossMeter, bar, force: bool) -> None:
        """Check the window's loss is finite and show it (bar postfix, or a log line every
        trainer.log_every updates). Reading the loss is a host sync: every update on the CPU where
        it is free, every 10 on accelerators, and whenever ``force`` (before a checkpoint)."""
        tcfg, step = self.tcfg, self.step_in_epoch
        log_now = bool(tcfg.log_every) and step % tcfg.log_every == 0
        sync_every = 1 if self.device.type == "cpu" else 10
        if not (log_now or force or step % sync_every == 0):
            return
        window_avg = meter.window_average()
        if not math.isfinite(window_avg):
            raise FloatingPointError(
                f"training loss is {window_avg} at epoch {self.epoch + 1}, step {step}: lower optim.lr, "
                "set trainer.clip_grad, or check the data for NaN/inf")
        info = {"loss": window_avg, "lr": self._lr(), f"{self.sample_name}/s": meter.window_rate() * self.env.world_size}
        if self.show_bar:
            bar.set_postfix({k: f"{v:.3g}" for k, v in info.items()}, refresh=False)
        elif log_now:
            log.info("epoch %d step %d/%d | %s", self.epoch + 1, step, self.layout.updates_per_epoch,
                     format_metrics(info))
        if log_now or self.show_bar:
            meter.reset_window()

    def _epoch_stats(self, meter: LossMeter) -> dict[str, Any]:
        """The epoch's mean loss over every process, its lr, throughput and duration."""
        elapsed = time.perf_counter() - meter.started
        sums = meter.sums()
        if not math.isfinite(sums["loss"]):
            raise FloatingPointError(f"training loss is {sums['loss']} in epoch {self.epoch + 1}: lower optim.lr, "
                                     "set trainer.clip_grad, or check the data for NaN/inf")
        reduced = all_reduce_sum({k: torch.tensor(float(v), dtype=torch.float64) for k, v in sums.items()}, self.env)
        return {
            "lr": self._lr(),
            "train/loss": float(reduced["loss"] / max(float(reduced["samples"]), 1.0)),
            f"train/{self.sample_name}_per_s": meter.samples_seen * self.env.world_size / max(elapsed, 1e-9),
            "time_s": elapsed,
        }

    def _lr(self) -> float:
        return max(g["lr"] for g in self.optimizer.param_groups)
