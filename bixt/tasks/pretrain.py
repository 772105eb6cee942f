"""``python -m bixt.tasks.pretrain``: self-supervised masked modelling that trains every layer's
tokens (:mod:`bixt.models.pretrain`), for images, point clouds and bytes. No labels are read.

    python -m bixt.tasks.pretrain                                  # masked image modelling, embedded shapes
    python -m bixt.tasks.pretrain data=folder data.root=DIR         # any image folder (class sub-folders or flat)
    python -m bixt.tasks.pretrain data=hf data.path=DIR             # a local Hugging Face image dataset
    python -m bixt.tasks.pretrain modality=points                   # masked point groups, embedded solids
    python -m bixt.tasks.pretrain modality=points data=modelnet40 data.root=DIR   # or data=shapenetpart
    python -m bixt.tasks.pretrain modality=bytes                    # masked bytes, embedded text
    python -m bixt.tasks.pretrain modality=bytes data=text_files data.root=DIR    # *.txt; also data=listops / data=aan

Each modality's default model is the architecture of its default downstream model (imagenet,
modelnet40_cls, lra_listops) with every layer two-sided, so ``finetune_from=RUN/best.pth`` in those
tasks needs no other override. The evaluation metric is the masked-token loss (lower is better;
bytes also report the masked-byte accuracy); each evaluation writes a picture into ``RUN/recon/``.
"""
from __future__ import annotations

from pathlib import Path
import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import hydra
from hydra.errors import InstantiationException
import torch
from omegaconf import DictConfig

from bixt.engine.run_dir import base_dir
from bixt.engine.task import TaskAdapter
from bixt.models.pretrain import MaskedByteModel, MaskedImageModel, MaskedPointModel
from bixt.tasks import kit

MODALITIES = {"images": MaskedImageModel, "points": MaskedPointModel, "bytes": MaskedByteModel}


# ----------------------------------------------------------------------------- pictures
def _cpu(outputs: Mapping[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    return {k: v[:count].detach().float().cpu() if v.is_floating_point() else v[:count].detach().cpu()
            for k, v in outputs.items()}


def image_picture(model: MaskedImageModel, outputs: Mapping[str, torch.Tensor], path: Path) -> None:
    """Rows original / masked input / reconstruction, each image scaled to its own range."""
    from torchvision.utils import save_image

    masked, recon = model.reconstruct(outputs)
    images = outputs["images"]
    low = images.amin((1, 2, 3), keepdim=True).repeat(3, 1, 1, 1)  # the original's range for all three rows
    high = images.amax((1, 2, 3), keepdim=True).repeat(3, 1, 1, 1)
    rows = torch.cat([images, masked, recon])
    save_image(((rows - low) / (high - low + 1e-6)).clamp(0, 1), path, nrow=images.shape[0], padding=1)


def point_picture(model: MaskedPointModel, outputs: Mapping[str, torch.Tensor], path: Path) -> None:
    """Per cloud: the visible groups (grey), the masked groups (blue) and their reconstruction (red)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(4, outputs["points"].shape[0])
    fig = plt.figure(figsize=(4 * count, 4))
    for i in range(count):
        ax = fig.add_subplot(1, count, i + 1, projection="3d")
        mask, centres = outputs["mask"][i], outputs["centres"][i]
        scale = model.backbone.tokenizer.relative_scale
        truth = outputs["target"][i] / scale + centres.unsqueeze(1)
        recon = outputs["pred"][i] / scale + centres.unsqueeze(1)
        for points, colour, label in ((truth[~mask], "0.7", "visible"), (truth[mask], "tab:blue", "masked"),
                                      (recon[mask], "tab:red", "reconstruction")):
            points = points.reshape(-1, 3)
            ax.scatter(points[:, 0], points[:, 2], points[:, 1], s=2, c=colour, label=label)
        ax.set_axis_off()
    fig.axes[0].legend(loc="upper left", fontsize=7)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def byte_picture(model: MaskedByteModel, outputs: Mapping[str, torch.Tensor], path: Path,
                 id_tokens: Optional[Sequence[str]] = None) -> None:
    """A text file: per line the input with masked ids as ``_``, the input with the predictions
    filled in, and the masked ids against their predictions. Ids are bytes, or with ``id_tokens``
    (a token vocabulary such as ListOps') the tokens they name, space-separated."""
    def text(ids: torch.Tensor) -> str:
        if id_tokens is not None:
            return " ".join("_" if int(i) < 0 else id_tokens[int(i)] for i in ids if int(i))
        return bytes(ord("_") if int(i) < 0 else int(i) - 1 for i in ids if int(i) <= 256 and int(i)).decode("latin-1")

    lines = []
    predicted = outputs["logits"].argmax(-1)
    for i in range(min(6, outputs["target"].shape[0])):
        target, chosen = outputs["target"][i], outputs["mask"][i]
        shown = torch.where(outputs["masked"][i], torch.full_like(target, -1), outputs["input"][i])
        filled = torch.where(chosen, predicted[i], target)
        lines += [f"original:  {text(target)}", f"input:     {text(shown)}", f"predicted: {text(filled)}",
                  f"masked:    {text(target[chosen])!r} -> {text(predicted[i][chosen])!r}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


PICTURES: dict[type, tuple[Callable, str]] = {MaskedImageModel: (image_picture, "png"),
                                              MaskedPointModel: (point_picture, "png"),
                                              MaskedByteModel: (byte_picture, "txt")}


# ----------------------------------------------------------------------------- adapter
class MaskedEvaluator:
    """Mean masked loss (and masked-byte accuracy) over an evaluation; the first batch drawn."""

    def __init__(self, model: torch.nn.Module, draw: Optional[Callable[[Mapping[str, torch.Tensor]], None]]) -> None:
        self.model, self.draw = model, draw
        self.sums = torch.zeros(4, dtype=torch.float64)  # loss * masked, masked, correct, batches

    def update(self, outputs: Mapping[str, torch.Tensor], batch: Any) -> None:
        masked = float(outputs["mask"].sum())
        self.sums[0] += float(self.model.loss(outputs)) * masked
        self.sums[1] += masked
        if "logits" in outputs:
            hit = outputs["logits"].argmax(-1) == outputs["target"]
            self.sums[2] += float((hit & outputs["mask"]).sum())
        if self.draw is not None:
            self.draw(_cpu(outputs, 8))
            self.draw = None

    def state(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums}

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        loss, masked, correct, _ = state["sums"].tolist()
        metrics = {"loss": loss / max(masked, 1.0)}
        if isinstance(self.model, MaskedByteModel):
            metrics["masked_acc"] = correct / max(masked, 1.0)
        return metrics


class MaskedModellingAdapter(TaskAdapter):
    """``model(inputs)`` (labels ignored), the model's own masked loss; best = lowest masked loss."""

    main_metric = "loss"
    main_metric_mode = "min"

    def __init__(self, model: torch.nn.Module, picture_dir: Optional[Path], ema: bool = False,
                 id_tokens: Optional[Sequence[str]] = None) -> None:
        self.model, self.picture_dir, self.ema, self.id_tokens = model, picture_dir, ema, id_tokens
        self.evaluations = 0
        self.sample_name = {MaskedImageModel: "img", MaskedPointModel: "clouds"}.get(type(model), "seqs")
        self.checkpoint_extra = {"pretraining": {"modality": next(k for k, v in MODALITIES.items()
                                                                  if isinstance(model, v))}}

    @staticmethod
    def inputs(batch: Any) -> torch.Tensor:
        """The input of a classification batch ``(inputs, labels)`` or a part-segmentation one
        (``{"pos": ...}``, fixed-size clouds); labels are never read."""
        if isinstance(batch, Mapping):
            return batch["pos"]
        return batch[0] if isinstance(batch, (list, tuple)) else batch

    def forward(self, model: torch.nn.Module, batch: Any) -> Any:
        return model(self.inputs(batch))

    def loss(self, outputs: Any, batch: Any) -> torch.Tensor:
        return self.model.loss(outputs)

    def batch_size(self, batch: Any) -> int:
        return int(self.inputs(batch).shape[0])

    def make_evaluator(self) -> MaskedEvaluator:
        self.evaluations += 1
        draw = None
        rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        if self.picture_dir is not None and rank0:
            # with EMA every epoch evaluates twice: the model, then its EMA
            ema = self.ema and self.evaluations % 2 == 0
            epoch = (self.evaluations + 1) // 2 if self.ema else self.evaluations
            picture, suffix = PICTURES[type(self.model)]
            if self.id_tokens is not None:
                picture = functools.partial(picture, id_tokens=self.id_tokens)
            path = self.picture_dir / f"epoch_{epoch:03d}{'_ema' if ema else ''}.{suffix}"

            def draw(outputs: Mapping[str, torch.Tensor]) -> None:
                path.parent.mkdir(parents=True, exist_ok=True)
                picture(self.model, outputs, path)
        return MaskedEvaluator(self.model, draw)


# ----------------------------------------------------------------------------- entry point
def train(cfg: DictConfig) -> dict[str, float]:
    data, start = kit.prepare(cfg)
    runtime = {"encoder": {"vocab_size": data.metadata["vocab_size"]}} if "vocab_size" in data.metadata else {}
    try:
        model = kit.build_model(cfg.model, **runtime)
    except (ValueError, InstantiationException) as err:  # a mask ratio, block or image size the model cannot take
        raise kit.ConfigValueError(str(err.__cause__ if isinstance(err.__cause__, ValueError) else err)) from None
    pictures = None if cfg.trainer.eval_only else base_dir(cfg.trainer, None) / "recon"
    adapter = MaskedModellingAdapter(model, pictures, ema=bool(cfg.trainer.ema),
                                     id_tokens=data.metadata.get("id_tokens") if isinstance(model, MaskedByteModel) else None)
    return kit.run(cfg, model, adapter, data, start=start)


@hydra.main(version_base=None, config_path="../configs/pretrain", config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    return kit.main(cfg, train, "val/loss")


if __name__ == "__main__":
    kit.cli(main, "pretrain")
