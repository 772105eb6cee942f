"""The shared training engine: one loop for every bixt task.

Public API (stable)
-------------------
``run(cfg, model, adapter, data, *, start=None) -> dict[str, float]``
    Train ``model`` on ``data.train`` and evaluate on ``data.val`` after every ``trainer.eval_every``
    epochs (and the last); at the end evaluate each ``data.tests[name]`` with the ``best`` (or
    ``last``, ``trainer.test_with``) weights. With ``trainer.eval_only=true`` only evaluate
    (``data.train`` may be ``None``). ``data`` is the :class:`~bixt.data.task_data.TaskData` every
    data builder returns (``TaskData(train, val)`` wraps two datasets). Returns the final metrics, flat:
    ``{"epoch", "step", "lr", "train/loss", "val/<metric>", "val_ema/<metric>", "best/<main_metric>",
    "test_<name>/<metric>", ...}``.

    * ``cfg``: the composed config; the engine reads ``cfg.trainer`` (:class:`TrainerConfig`) and
      ``cfg.optim`` (:class:`OptimConfig`), both validated against their schemas (a wrong key is an
      error that lists the valid ones). Anything else in ``cfg`` is the task's business; the whole
      resolved config is saved to ``<run_dir>/config.yaml`` and into every checkpoint.
    * ``model``: an ``nn.Module`` built by the task (call :func:`seed_everything` first, so the
      initial weights are deterministic). The engine moves it to the device, loads
      ``trainer.checkpoint`` into it if set, and wraps it (DDP, torch.compile) itself.
    * ``start``: the :class:`StartCheckpoint` the task got from :func:`start_checkpoint` for this
      ``cfg`` (it read the file to learn the class names): the engine loads from those contents
      instead of reading the file again. ``None``: the engine resolves and reads it.
    * ``adapter``: an instance of a :class:`TaskAdapter` subclass (the ABC: ``forward``, ``loss``,
      ``batch_size``, ``make_evaluator``, ``main_metric`` are abstract), overriding the hooks listed
      in :mod:`bixt.engine.task` as needed (``train_batch_transform`` for batch-level augmentation
      such as mixup, ``to_device``, ``main_metric_mode``, ``sample_name``). Other objects are refused.
    * ``data.train``/``data.val``/``data.tests``: map-style datasets; batches are built by
      ``data.collate_fn`` (default: torch's), moved to the device (tensors in nested dicts, lists,
      tuples), and handed to the adapter. Per-sample augmentation inside a dataset may use
      ``random``/``numpy``/``torch`` global RNGs freely: the engine seeds them per sample from
      ``(seed, epoch, index)`` (reproducible across worker counts, ranks and resumes).

``start_checkpoint(cfg) -> StartCheckpoint | None``
    The checkpoint a run of ``cfg`` starts from, resolved and read once: ``eval_only`` evaluates
    ``trainer.checkpoint`` (or with ``trainer.resume`` the run's), ``resume`` continues the run's
    ``last.pth``, else ``trainer.checkpoint`` gives initial weights (fine-tuning). ``.path``,
    ``.kind`` (eval | resume | weights), ``.metadata`` (what the adapter stored: ``classes``...),
    ``.classes``, ``.binds_labels`` (eval or resume: the data must be labelled as the checkpoint was).

``seed_everything(seed)``
    Seed ``random``, ``numpy`` and ``torch``. Tasks call it with ``cfg.trainer.seed`` before
    building data and model.

``init_distributed(device_spec="auto") -> DistEnv``
    Join the torchrun process group early (idempotent; ``run`` calls it too), e.g. to know
    ``rank``/``world_size`` while preparing data.

``TrainerConfig``, ``OptimConfig``
    The schemas, registered in Hydra's ConfigStore as ``trainer/default`` and ``optim/default``.
    Select the trainer in a task's primary config with ``- trainer: default`` in its defaults list.

What the engine does
--------------------
CUDA if present else CPU (``trainer.device``); DDP under ``torchrun`` (NCCL on GPU, gloo on
CPU) with a resumable ``DistributedSampler``, single process otherwise; bf16 autocast on CUDA and
on CPUs with native bf16 GEMMs (``trainer.amp``: auto | bf16 | fp16 | fp32; the choice and its reason
logged at start, :mod:`bixt.engine.precision`); ``torch.compile``
(``trainer.compile``); gradient accumulation (``trainer.accumulate``) and clipping
(``trainer.clip_grad``); EMA (``trainer.ema``); any timm optimizer with the lr scaled to the
global batch (``optim.lr_base_batch``, ``optim.lr_scale``) and any timm schedule, advanced every
optimizer step; atomic checkpoints ``<run_dir>/last.pth`` (each epoch and every
``trainer.ckpt_every_steps`` steps) and ``best.pth``; exact resume (``trainer.resume``: true |
auto | PATH) on CPU, and a resume with another ``trainer.epochs``, batch size, number of processes or
``optim.*`` value continues as the run now asked for (the lr schedule is rebuilt and placed at the
checkpoint's position; another optimizer is refused: :mod:`bixt.engine.resume`); per-epoch metrics in
``<run_dir>/metrics.jsonl`` and ``metrics.csv`` and on the console; a tqdm bar (loss, lr, samples/s)
on rank 0 when stderr is a terminal (log lines every ``trainer.log_every`` steps otherwise);
``trainer.threads`` CPU threads (1 is often fastest for tiny models and robust on a busy machine);
``trainer.eval_only`` (evaluates ``trainer.checkpoint``, or with ``trainer.resume`` the run's
checkpoint, or else the ``last.pth`` of the run in ``trainer.run_dir``; it never writes into a training
run: with ``trainer.run_dir`` holding one, results go to ``<run_dir>/eval/<time>/``); a new run into a
directory holding a run is refused (``resume=true`` or another ``trainer.run_dir``), and a lock file
keeps two runs out of one directory (:mod:`bixt.engine.run_dir`); a training set smaller than one
batch trains with one smaller batch.
Impossible settings (``trainer.epochs=0``, negative batch sizes...) fail at start naming the key. Process-wide torch settings it changes (threads, deterministic
algorithms) are restored when ``run`` returns.

Epochs are numbered from 1 everywhere a person reads them: log lines, ``metrics.jsonl``'s ``epoch``
(the epoch the row reports) and a checkpoint's position ("end of epoch 2", "epoch 3, after 8 of its
updates"); a checkpoint's ``epoch`` key counts the epochs completed, the same number at an epoch's end.

Reproducibility on CPU: same seed, same result, whatever ``num_workers``; and a run killed at any
point and resumed (``trainer.resume``) ends with bit-identical weights, because the checkpoint holds
the sampler position, the partial epoch sums and every rank's RNG states (see
:mod:`bixt.engine.reproducibility`).

Example (a task entry point)::

    @hydra.main(version_base=None, config_path="../configs/mytask", config_name="config")
    def main(cfg):
        seed_everything(cfg.trainer.seed)
        start = start_checkpoint(cfg)  # None for a fresh run
        classes = start.classes if start is not None and start.binds_labels else None
        data = build_data(cfg.data, classes=classes)   # a TaskData
        model = build_model(cfg.model)
        return run(cfg, model, MyAdapter(), data, start=start)
"""
from bixt.engine.checkpointing import StartCheckpoint, start_checkpoint
from bixt.engine.config import OptimConfig, TrainerConfig, optim_config, register_configs, trainer_config
from bixt.engine.distributed import DistEnv, init_distributed
from bixt.engine.reproducibility import seed_everything
from bixt.engine.run_dir import RunDirError
from bixt.engine.task import Evaluator, TaskAdapter, move_to_device
from bixt.data.task_data import TaskData
from bixt.engine.trainer import run

register_configs()

__all__ = [
    "run", "start_checkpoint", "StartCheckpoint", "TaskData", "seed_everything", "init_distributed", "DistEnv",
    "TrainerConfig", "OptimConfig", "trainer_config", "optim_config", "TaskAdapter", "Evaluator",
    "move_to_device", "RunDirError",
]
