"""The one data contract: every data builder (the ``_target_`` of a task's ``data/*.yaml``) returns
a :class:`TaskData`, and :func:`bixt.engine.run` takes it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from torch.utils.data import Dataset


@dataclass
class TaskData:
    """What a task trains and evaluates on.

    ``train`` is None when only evaluating; ``tests`` are evaluated once at the end, named in the
    metrics as ``test_<name>/...``; ``class_names`` label the outputs (``num_classes`` defaults to
    their count); ``collate_fn`` builds batches (None: torch's default); ``metadata`` holds what
    else the model or adapter needs from the data (e.g. a vocabulary size, the part layout).
    """

    train: Optional[Dataset]
    val: Dataset
    tests: dict[str, Dataset] = field(default_factory=dict)
    class_names: Sequence[str] = ()
    num_classes: Optional[int] = None
    collate_fn: Optional[Callable] = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = [str(c) for c in self.class_names]
        if self.num_classes is None:
            self.num_classes = len(self.class_names)
        # an empty test split (e.g. test_size=0) is no test set
        self.tests = {name: split for name, split in (self.tests or {}).items() if len(split)}

    def sizes(self) -> str:
        """``train N, val N, test_<name> N`` for the log."""
        parts = [("train", self.train), ("val", self.val), *((f"test_{k}", v) for k, v in self.tests.items())]
        return ", ".join(f"{name} {len(split)}" for name, split in parts if split is not None)
