"""Visual question answering: the CLEVR reader, the embedded scenes, the VQA model and the task command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bixt.core import BiXTEncoder
from bixt.data.clevr import ClevrDataError, clevr_data, embedded_vqa_data
from bixt.data.vqa_scenes import FAMILIES, make_vqa_scene
from bixt.heads.classification import ClassificationHead
from bixt.metrics.vqa import VQAEvaluator
from bixt.models.vqa import VQAModel

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = {"yes": "exist", "no": "exist", "2": "count", "red": "query_color", "small": "query_size"}


def write_clevr(root: Path, per_split: int = 4) -> Path:
    """A CLEVR_v1.0-layout folder: real PNGs (RGBA, as CLEVR's renders) and question JSON."""
    for split in ("train", "val"):
        folder = root / "images" / split
        folder.mkdir(parents=True)
        questions = []
        for i in range(per_split):
            name = f"CLEVR_{split}_{i:06d}.png"
            image, _ = make_vqa_scene(7, split, i, img_size=24)
            Image.fromarray(image.transpose(1, 2, 0)).convert("RGBA").resize((36, 24)).save(folder / name)
            for j, answer in enumerate(("yes", "2", "red", "small" if split == "train" else "cyan")):
                questions.append({"image_index": i, "split": split, "image_filename": name, "question_index": j,
                                  "question": f"Is there something number {j} of image {i}?", "answer": answer,
                                  "question_family_index": j, "program": [{"function": PROGRAMS.get(answer, "query_color")}]})
        (root / "questions").mkdir(exist_ok=True)
        (root / "questions" / f"CLEVR_{split}_questions.json").write_text(
            json.dumps({"info": {"split": split}, "questions": questions}))
    return root


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()} | {"dirs": sorted(str(p) for p in root.rglob("*") if p.is_dir())}


def test_clevr_reader_answers_families_and_unseen_answers(tmp_path):
    root = write_clevr(tmp_path / "CLEVR_v1.0")
    data = clevr_data(root=str(root), img_size=(24, 36))
    assert data.class_names == ["2", "red", "small", "yes"]  # the training answers, sorted
    assert data.metadata["families"] == ["exist", "count", "query_attribute"]
    batch = data.collate_fn([data.val[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 24, 36) and batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["question_mask"].all() and (batch["question"] != 1).all()  # every word known, no [UNK]
    assert batch["answer"].tolist() == [3, 0, 1, -1]  # "cyan" never answers a training question: -1
    evaluator = VQAEvaluator(data.metadata["families"])
    logits = torch.zeros(4, 4)
    logits[torch.arange(4), batch["answer"].clamp(min=0)] = 1.0  # right wherever an answer exists
    evaluator.update(logits, batch)
    metrics = evaluator.compute(evaluator.state())
    assert metrics["top1"] == 75.0 and metrics["acc/exist"] == 100.0 and metrics["acc/query_attribute"] == 50.0


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "images/val/CLEVR_val_000001.png").unlink(), "CLEVR_val_000001.png: no such image, named by"),
    (lambda r: (r / "images/train/CLEVR_train_000002.png").write_bytes(b"not a png"),
     "CLEVR_train_000002.png: cannot read the image"),
    (lambda r: (r / "questions/CLEVR_train_questions.json").write_text('{"info": {}}'),
     "CLEVR_train_questions.json: not CLEVR questions JSON: missing key 'questions'"),
    (lambda r: (r / "questions/CLEVR_val_questions.json").write_text('{"questions": [{"question": "q?"}]}'),
     "CLEVR_val_questions.json: question 0 has no key 'image_filename'"),
    (lambda r: (r / "questions/CLEVR_val_questions.json").write_text(json.dumps({"questions": [
        {"image_filename": "CLEVR_val_000000.png", "question": "  ", "answer": "yes", "question_family_index": 0}]})),
     "CLEVR_val_questions.json: question 0 is empty"),
])
def test_clevr_bad_input_is_one_line_naming_the_file(tmp_path, damage, message):
    root = write_clevr(tmp_path / "CLEVR_v1.0")
    damage(root)
    with pytest.raises(ClevrDataError) as err:
        data = clevr_data(root=str(root), img_size=(24, 36))
        [data.train[i] for i in range(len(data.train))]
    assert message in err.value.message and "\n" not in err.value.message


def test_embedded_scenes_deterministic_and_balanced_per_family():
    a, qa = make_vqa_scene(3, "train", 5)
    b, qb = make_vqa_scene(3, "train", 5)
    assert np.array_equal(a, b) and qa == qb
    assert not np.array_equal(a, make_vqa_scene(3, "val", 5)[0])
    answers = {f: Counter() for f in FAMILIES}
    for i in range(400):
        for _, answer, family in make_vqa_scene(0, "train", i)[1]:
            answers[family][answer] += 1
    for family in ("existence", "compare", "spatial"):  # yes / no within 15 points of even
        assert abs(answers[family]["yes"] - answers[family]["no"]) < 0.15 * sum(answers[family].values())
    assert all(answers["counting"][str(n)] > 0.05 * 400 for n in range(4))
    assert len(answers["query"]) >= 10


def tiny_model(streams, num_answers=5, vocab_size=30) -> VQAModel:
    torch.manual_seed(0)
    encoder = BiXTEncoder(32, 2, 4, num_heads=2, token_dims={s: 16 for s in streams}, last_layer="latents")
    return VQAModel(encoder=encoder, head=ClassificationHead(dim=32, num_classes=num_answers),
                    vocab_size=vocab_size, max_question_len=24)


def test_model_reads_only_its_streams_and_learns_on_embedded_data():
    data = embedded_vqa_data(train_scenes=8, val_scenes=4, img_size=16, max_len=24)
    batch = data.collate_fn([data.train[i] for i in range(8)])
    model = tiny_model(("image", "text"), data.num_classes, data.metadata["vocab_size"])
    image_only = tiny_model(("image",), data.num_classes)
    question_only = tiny_model(("text",), data.num_classes, data.metadata["vocab_size"])
    assert question_only(None, batch["question"], batch["question_mask"]).shape == (8, data.num_classes)
    assert image_only(batch["image"]).shape == (8, data.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(batch["image"], batch["question"], batch["question_mask"]),
                                                 batch["answer"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_fused_model_exports_to_onnx_and_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")  # torch.onnx's exporter
    model = tiny_model(("text", "image")).eval()
    g = torch.Generator().manual_seed(3)
    image, question = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.randint(1, 30, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = model(image, question, mask)
        torch.onnx.export(model, (image, question, mask), dynamo=True, verbose=False).save(str(tmp_path / "vqa.onnx"))
    session = ort.InferenceSession(str(tmp_path / "vqa.onnx"), providers=["CPUExecutionProvider"])
    feeds = {arg.name: x.numpy() for arg, x in zip(session.get_inputs(), (image, question, mask))}
    (got,) = session.run(None, feeds)
    assert got.shape == expected.shape
    assert (torch.from_numpy(got) - expected).abs().max() <= 1e-4


def test_hidden_head_learns_an_answer_that_is_a_product_of_two_inputs():
    """Latents carrying a question bit and an image bit, the answer their XOR: a linear map of the
    mean latent cannot fit it (at best 3 of the 4 cases), a hidden layer does."""
    torch.manual_seed(0)
    bits = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float32)
    latents = torch.cat([bits, torch.zeros(4, 2)], 1)[:, None].repeat(1, 3, 1) * 2 - 1  # (4 cases, 3 latents, 4)
    answers = (bits[:, 0] != bits[:, 1]).long()
    accuracy = {}
    for hidden in (None, 16):
        head = ClassificationHead(dim=4, num_classes=2, hidden_dim=hidden)
        opt = torch.optim.Adam(head.parameters(), lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(latents), answers).backward()
            opt.step()
        accuracy[hidden] = float((head(latents).argmax(-1) == answers).float().mean())
    assert accuracy[16] == 1.0 and accuracy[None] <= 0.75


def test_model_refuses_a_stream_it_was_not_built_for():
    with pytest.raises(ValueError, match="token_dims must name the streams"):
        VQAModel(encoder=BiXTEncoder(32, 1, 4, num_heads=2, token_dims={"audio": 8}),
                 head=ClassificationHead(dim=32, num_classes=3), vocab_size=10)


# ---------------------------------------------------------------------------------------- the command
TINY = ["model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.num_heads=2", "model.encoder.num_latents=4",
        "++model.encoder.token_dims.text=16", "trainer.epochs=1", "trainer.batch_size=4", "trainer.log_every=0",
        "trainer.min_updates=0"]


def run_task(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, BIXT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "bixt.tasks.clevr_vqa", f"trainer.run_dir={tmp_path / 'run'}",
                           f"hydra.run.dir={tmp_path / 'hydra'}", *TINY, *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_task_runs_and_evaluates_on_a_clevr_folder_it_leaves_untouched(tmp_path):
    root = write_clevr(tmp_path / "CLEVR_v1.0")
    before = snapshot(root)
    proc = run_task(tmp_path, "data=clevr", f"data.root={root}", "data.img_size=[24,36]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = {k: v for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
               for k, v in json.loads(line).items()}
    assert 0 <= metrics["val/top1"] <= 75.0  # one val answer is unseen: never right
    assert "val/top5" in metrics and "val/acc/exist" in metrics
    log = proc.stdout + proc.stderr
    assert "accuracy per question family" in log and "query_attribute" in log
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert ckpt["classes"] == ["2", "red", "small", "yes"]
    assert json.loads(ckpt["tokenizer"]) == json.loads((tmp_path / "run" / "tokenizer.json").read_text())
    assert snapshot(root) == before


@pytest.mark.e2e
def test_task_bad_clevr_file_is_one_line(tmp_path):
    root = write_clevr(tmp_path / "CLEVR_v1.0")
    (root / "questions" / "CLEVR_train_questions.json").write_text("[1, 2]")
    proc = run_task(tmp_path, "data=clevr", f"data.root={root}")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")  # one line, no traceback
    assert "CLEVR_train_questions.json: not CLEVR questions JSON: missing key 'questions'" in proc.stderr


def test_task_configs_compose_validate_and_refuse_a_misspelt_key():
    from hydra import compose, initialize_config_dir

    from bixt.constraints import ConfigValueError
    from bixt.tasks import kit

    def composed(*overrides):
        with initialize_config_dir(config_dir=str(REPO / "bixt" / "configs" / "clevr_vqa"), version_base=None):
            return compose("config", overrides=list(overrides))

    assert "- task_hydra" in (REPO / "bixt" / "configs" / "clevr_vqa" / "config.yaml").read_text()
    for model, streams in (("bixt_fusion", ["text", "image"]), ("question_only", ["text"]),
                           ("image_only", ["image"])):
        cfg = composed(f"model={model}")
        kit.validate(cfg)
        assert list(cfg.model.encoder.token_dims) == streams
    kit.validate(composed("data=clevr", "data.root=/nowhere"))
    with pytest.raises(ConfigValueError, match="unknown key model.encoder.token_dimz"):
        kit.validate(composed("+model.encoder.token_dimz=3"))
    with pytest.raises(ConfigValueError, match="model=fused is not an option of clevr_vqa"):
        kit.check_overrides("clevr_vqa", ["model=fused"])
