"""Cost of the fused encoder (one cross block per stream per layer) as the image tokens and the
question length grow, next to the alternative: both streams projected to one width and
concatenated into one sequence for a single-stream encoder ("joined").

    python benchmarks/bench_fusion.py             # the grid (image tokens 64..4096, question 16..256)
    python benchmarks/bench_fusion.py --quick     # a small grid, seconds
    python benchmarks/bench_fusion.py --accuracy  # also: both designs trained briefly on the embedded VQA set

Per point: forward FLOPs per sample (:func:`bixt.flops.count_flops`), forward time of a batch
(median of repeats; the machine may be shared, read the times as rough), and the memory of one
training step's activations (the tensors autograd keeps for the backward, counted from the saved
tensors). Both designs are linear in the total token count; the fused one has more latent-side
weights (one latent MLP per stream) and no input projection. Writes
``benchmarks/results/bench_fusion{,_quick}.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from bixt.core import BiXTEncoder
from bixt.flops import count_flops, count_parameters

RESULTS = Path(__file__).resolve().parent / "results"
ENCODER = dict(dim=64, depth=3, num_latents=16, num_heads=4, token_mlp_ratio=2.0)
DIMS = {"image": 64, "text": 64}


class JoinedStreamsEncoder(nn.Module):
    """The alternative design: each stream projected to ``width`` and tagged by a modality embedding,
    the streams concatenated (masks too) into one sequence for a single-stream :class:`BiXTEncoder`;
    the refined sequence is split back per stream. Same call as a fused encoder."""

    def __init__(self, token_dims: dict[str, int], width: int = 64, **encoder) -> None:
        super().__init__()
        self.token_dims = dict(token_dims)
        self.dim = encoder["dim"]
        self.proj = nn.ModuleDict({name: nn.Linear(d, width) for name, d in token_dims.items()})
        self.modality_embed = nn.ParameterDict({name: nn.Parameter(torch.randn(1, 1, width) * 0.02)
                                                for name in token_dims})
        self.encoder = BiXTEncoder(**encoder, token_dim=width)

    def forward(self, tokens: dict[str, torch.Tensor], token_masks=None):
        token_masks = token_masks or {}
        names = [n for n in self.token_dims if n in tokens]
        joined = torch.cat([self.proj[n](tokens[n]) + self.modality_embed[n] for n in names], dim=1)
        masks = [token_masks.get(n, torch.ones(tokens[n].shape[:2], dtype=torch.bool, device=joined.device))
                 for n in names]
        latents, refined = self.encoder(joined, torch.cat(masks, dim=1) if token_masks else None)
        return latents, dict(zip(names, refined.split([tokens[n].shape[1] for n in names], dim=1)))


def build(design: str, **overrides) -> nn.Module:
    kwargs = {**ENCODER, **overrides}
    if design == "fused":
        return BiXTEncoder(**kwargs, token_dims=DIMS)
    return JoinedStreamsEncoder(DIMS, **kwargs)


def inputs(batch: int, image_tokens: int, text_len: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    tokens = {"image": torch.randn(batch, image_tokens, DIMS["image"], generator=g),
              "text": torch.randn(batch, text_len, DIMS["text"], generator=g)}
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    mask[:, text_len * 3 // 4:] = False  # a padded tail, as in a batch of questions
    return tokens, {"text": mask}


def forward_ms(model: nn.Module, tokens, masks, repeats: int) -> float:
    times = []
    with torch.inference_mode():
        model(tokens, token_masks=masks)
        for _ in range(repeats):
            start = time.perf_counter()
            model(tokens, token_masks=masks)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def activation_mb(model: nn.Module, tokens, masks) -> float:
    """Bytes autograd keeps for one training step's backward (distinct storages)."""
    kept: dict[int, int] = {}

    def keep(t: torch.Tensor):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        latents, refined = model(tokens, token_masks=masks)
        loss = latents.sum() + sum(x.sum() for x in refined.values())
    loss.backward()
    model.eval()
    return sum(kept.values()) / 2 ** 20


def cost_grid(image_tokens, text_lens, batch: int, repeats: int) -> list[dict]:
    rows = []
    for n_img in image_tokens:
        for n_txt in text_lens:
            tokens, masks = inputs(batch, n_img, n_txt)
            for design in ("fused", "joined"):
                torch.manual_seed(0)
                model = build(design).eval()
                rows.append({"design": design, "image_tokens": n_img, "text_tokens": n_txt,
                             "gflops_per_sample": count_flops(model, tokens, token_masks=masks) / batch / 1e9,
                             "forward_ms": forward_ms(model, tokens, masks, repeats),
                             "activation_mb": activation_mb(model, tokens, masks),
                             "params_k": count_parameters(model) / 1e3})
                print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    return rows


def accuracy(design: str, epochs: int, train_scenes: int, seed: int = 0) -> float:
    """Val top-1 (%) of the task's fused VQA model with ``design``'s encoder, trained briefly."""
    from torch.utils.data import DataLoader

    from bixt.data.clevr import embedded_vqa_data
    from bixt.heads.classification import ClassificationHead
    from bixt.models.vqa import VQAModel

    data = embedded_vqa_data(train_scenes=train_scenes, val_scenes=500)
    torch.manual_seed(seed)
    encoder = build(design, last_layer="latents")
    model = VQAModel(encoder=encoder, head=ClassificationHead(dim=ENCODER["dim"], num_classes=data.num_classes),
                     vocab_size=data.metadata["vocab_size"], max_question_len=24)
    loader = DataLoader(data.train, batch_size=64, shuffle=True, collate_fn=data.collate_fn,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * len(loader), pct_start=0.05)
    for _ in range(epochs):
        for b in loader:
            loss = nn.functional.cross_entropy(model(b["image"], b["question"], b["question_mask"]), b["answer"],
                                               ignore_index=-1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    hits = count = 0
    with torch.inference_mode():
        for b in DataLoader(data.val, batch_size=256, collate_fn=data.collate_fn):
            hits += int((model(b["image"], b["question"], b["question_mask"]).argmax(-1) == b["answer"]).sum())
            count += len(b["answer"])
    return 100.0 * hits / count


def markdown(rows: list[dict], acc: dict) -> str:
    lines = ["| design | image tokens | question tokens | GFLOPs/sample | forward ms (batch) | activations MB | params k |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['design']} | {r['image_tokens']} | {r['text_tokens']} | {r['gflops_per_sample']:.4f} | "
              f"{r['forward_ms']:.1f} | {r['activation_mb']:.1f} | {r['params_k']:.0f} |" for r in rows]
    if acc:
        lines += ["", "| design | embedded VQA val top-1 % |", "|---|---|"]
        lines += [f"| {d} | {a:.2f} |" for d, a in acc.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small grid (seconds)")
    parser.add_argument("--accuracy", action="store_true", help="train both designs briefly on the embedded VQA set")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the --accuracy runs")
    parser.add_argument("--train-scenes", type=int, default=2000, help="scenes of the --accuracy runs")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        rows = cost_grid([64, 256, 1024], [16, 64], args.batch, repeats=3)
    else:
        rows = cost_grid([64, 256, 1024, 4096], [16, 64, 256], args.batch, repeats=7)
    acc = {d: accuracy(d, args.epochs, args.train_scenes) for d in ("fused", "joined")} if args.accuracy else {}
    stem = RESULTS / ("bench_fusion_quick" if args.quick else "bench_fusion")
    RESULTS.mkdir(exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"encoder": ENCODER, "token_dims": DIMS, "batch": args.batch,
                                                     "threads": args.threads, "cost": rows, "accuracy": acc}, indent=1))
    stem.with_suffix(".md").write_text(markdown(rows, acc))
    print(markdown(rows, acc))


if __name__ == "__main__":
    main()
