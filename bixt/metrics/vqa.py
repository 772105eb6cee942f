"""Question answering accuracy: top-1 / top-5 over all questions and top-1 per question family.

An answer the model has no class for (label -1: never given by a training question) counts as a
question answered wrongly, in every accuracy; the loss averages over the answerable questions."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F


class VQAEvaluator:
    """Sums on the device (no host sync per batch), summable across processes; ``compute`` gives
    ``top1``, ``top5`` (%), ``loss`` and ``acc/<family>`` (%) for each family with questions."""

    def __init__(self, families: Sequence[str], topk: Sequence[int] = (1, 5)) -> None:
        self.families = list(families)
        self.topk = tuple(topk)
        self.sums = torch.zeros(len(self.topk) + 3, dtype=torch.float64)  # hits per k, count, loss, answerable
        self.family_hits = torch.zeros(len(self.families), dtype=torch.float64)
        self.family_count = torch.zeros(len(self.families), dtype=torch.float64)

    def update(self, outputs: torch.Tensor, batch: Any) -> None:
        logits, answers, families = outputs.float(), batch["answer"], batch["family"]
        if self.sums.device != logits.device:
            self.sums, self.family_hits, self.family_count = (t.to(logits.device) for t in
                                                              (self.sums, self.family_hits, self.family_count))
        top = logits.topk(min(max(self.topk), logits.shape[-1]), dim=-1).indices
        hits = top == answers[:, None]  # label -1 matches nothing
        known = answers >= 0
        loss = F.cross_entropy(logits, answers.clamp(min=0), reduction="none")
        self.sums += torch.stack([*(hits[:, :k].any(-1).sum() for k in self.topk), answers.new_tensor(len(answers)),
                                  (loss * known).sum(), known.sum()]).to(self.sums.dtype)
        self.family_count.index_add_(0, families, torch.ones_like(families, dtype=self.family_count.dtype))
        self.family_hits.index_add_(0, families, hits[:, 0].to(self.family_hits.dtype))

    def state(self) -> dict[str, torch.Tensor]:
        return {"sums": self.sums, "family_hits": self.family_hits, "family_count": self.family_count}

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        sums = state["sums"].cpu()
        count, loss, known = (float(v) for v in sums[len(self.topk):])
        out = {f"top{k}": 100.0 * float(h) / max(count, 1.0) for k, h in zip(self.topk, sums)}
        out["loss"] = loss / max(known, 1.0)
        hits, counts = state["family_hits"].cpu(), state["family_count"].cpu()
        out.update({f"acc/{name}": 100.0 * float(hits[i] / counts[i])
                    for i, name in enumerate(self.families) if counts[i] > 0})
        return out
