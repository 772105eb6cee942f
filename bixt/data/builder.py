"""Data from a task's ``data`` config node: the node names its builder with ``_target_``.

Every task builds its data the same way, ``build_data(cfg.data, eval_only=..., **runtime)``: the
node's keys are the builder's keyword arguments (the node holds nothing else: what the trainer or
the adapter reads lives in their nodes), ``runtime`` adds what only the task knows (e.g. the points
the model needs per cloud), and every builder returns a :class:`~bixt.data.task_data.TaskData`.
Hydra resolves and authorises the target; the builder is then called directly so that its own
errors (a file named with its line, a missing key with the fix) reach the task unwrapped, not as
Hydra's ``InstantiationException``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from hydra.utils import instantiate
from omegaconf import OmegaConf

from bixt.data.task_data import TaskData


def build_data(data_cfg: Any, **runtime: Any) -> TaskData:
    """Call the builder ``data_cfg._target_`` names with the node's other keys and ``runtime``."""
    if OmegaConf.is_config(data_cfg):
        node = OmegaConf.to_container(data_cfg, resolve=True)
        # an unset mandatory value (``root: ???``) reaches the builder as None, which names the key to set
        node.update({key: None for key in node if OmegaConf.is_missing(data_cfg, key)})
    else:
        node = dict(data_cfg)
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ValueError("the data config has no _target_ naming its builder; choose a data=<option> of the task "
                         "or add _target_ to the node")
    data = instantiate(node, _partial_=True, _convert_="all")(**runtime)
    if not isinstance(data, TaskData):
        raise TypeError(f"the data builder {node['_target_']} returned {type(data).__name__}; a builder returns "
                        "a bixt.data.task_data.TaskData")
    return data


def check_num_points(num_points: Optional[int], min_points: int) -> None:
    """A point cloud builder's ``data.num_points`` must cover what the model's tokeniser needs."""
    if num_points is not None and int(num_points) < min_points:
        raise ValueError(f"data.num_points={num_points} is smaller than the {min_points} points the model needs per "
                         "cloud (model.tokenizer.num_groups / group_size); raise data.num_points or lower those")
