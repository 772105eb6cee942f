"""Masked pre-training (bixt.models.pretrain, python -m bixt.tasks.pretrain) and finetune_from."""
from __future__ import annotations

import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from bixt.core import BiXTEncoder
from bixt.data.errors import DataError
from bixt.data.unlabelled import (aan_documents_data, embedded_text_data, hf_images_data, image_folder_data,
                                  text_files_data)
from bixt.models.pretrain import (ByteHead, MaskedByteModel, MaskedImageModel, MaskedPointModel, block_mask, chamfer_distance,
                                  random_mask)
from bixt.models.text import BiXTSequenceEncoder
from bixt.tokenizers.point import PointGroupTokenizer
from bixt.weights import load_weights, read_state_dict
from task_runner import run_task_module

TINY = dict(dim=32, depth=2, num_latents=4, num_heads=2)


def image_model(**kwargs) -> MaskedImageModel:
    return MaskedImageModel(img_size=16, patch_size=4, encoder=TINY, **kwargs)


# ----------------------------------------------------------------------------- masking and losses
def test_random_mask_counts_and_never_picks_padding():
    real = torch.ones(3, 10, dtype=torch.bool)
    real[1, 6:] = False
    mask = random_mask(3, 10, 0.5, torch.device("cpu"), real=real)
    assert mask.sum(1).tolist() == [5, 3, 5] and not (mask & ~real).any()


def test_block_mask_masks_whole_blocks_and_refuses_a_block_larger_than_the_grid():
    mask = block_mask(2, (4, 4), 2, 0.5, torch.device("cpu")).view(2, 2, 2, 2, 2)  # b, rows, 2, cols, 2
    blocks = mask.permute(0, 1, 3, 2, 4).reshape(2, 4, 4)
    assert ((blocks.all(-1)) | (~blocks).all(-1)).all() and (blocks.all(-1).sum(1) == 2).all()
    with pytest.raises(ValueError, match=r"mask_block=5 tokens is larger than the 4x4 token grid"):
        image_model(mask_block=5)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5])
def test_mask_ratio_outside_the_open_interval_is_refused(ratio):
    with pytest.raises(ValueError, match=r"mask_ratio must lie in \(0, 1\)"):
        image_model(mask_ratio=ratio)


def test_image_size_the_tokeniser_cannot_take_is_refused():
    with pytest.raises(ValueError, match="not a multiple of the token stride"):
        MaskedImageModel(img_size=18, patch_size=4, encoder=TINY)


def test_chamfer_distance_matches_a_loop():
    pred, target = torch.randn(2, 5, 3), torch.randn(2, 7, 3)
    expected = [np.mean([min(((p - t) ** 2).sum() for t in target[b].numpy()) for p in pred[b].numpy()])
                + np.mean([min(((p - t) ** 2).sum() for p in pred[b].numpy()) for t in target[b].numpy()])
                for b in range(2)]
    torch.testing.assert_close(chamfer_distance(pred, target), torch.tensor(expected, dtype=torch.float32))
    assert float(chamfer_distance(target, target).abs().max()) == 0.0


def test_image_loss_reads_masked_tokens_only_and_overlapping_tokens_target_their_stride_cell():
    model = MaskedImageModel(img_size=16, patch_size=8, stride=4, encoder=TINY).eval()
    images = torch.randn(2, 3, 16, 16)
    out = model(images)
    assert out["pred"].shape == out["target"].shape == (2, 16, 4 * 4 * 3)
    torch.testing.assert_close(out["target"][0, 5].view(4, 4, 3).permute(2, 0, 1), images[0, :, 4:8, 4:8])
    perfect = dict(out, pred=torch.where(out["mask"].unsqueeze(-1), out["target"], out["pred"] + 5))
    assert float(model.loss(perfect).detach()) == 0.0


def test_masked_loss_falls_in_a_few_steps():
    torch.manual_seed(0)
    model = image_model()
    images = torch.randn(8, 3, 1, 1).expand(8, 3, 16, 16)  # one colour per image: masked cells show in visible ones
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model.loss(model(images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_every_image_layer_is_two_sided_and_gets_a_token_gradient():
    model = image_model()
    assert all(block.updates == "both" for block in model.backbone.encoder.blocks)
    model.loss(model(torch.randn(2, 3, 16, 16))).backward()
    last = model.backbone.encoder.blocks[-1].cross
    assert last.mlp_tokens.fc2.weight.grad.abs().sum() > 0


def test_point_groups_masked_centres_keep_position_and_targets_are_relative():
    tokenizer = PointGroupTokenizer(dim=32, num_groups=8, group_size=4, hidden=8)
    model = MaskedPointModel(tokenizer=tokenizer, encoder=BiXTEncoder(update_tokens_last=True, **TINY))
    out = model(torch.randn(2, 64, 3))
    assert out["pred"].shape == out["target"].shape == (2, 8, 4, 3) and out["mask"].sum(1).tolist() == [5, 5]
    assert torch.isfinite(model.loss(out))
    with pytest.raises(ValueError, match="update_tokens_last=true"):
        MaskedPointModel(tokenizer=tokenizer, encoder=BiXTEncoder(update_tokens_last=False, **TINY))


def test_byte_masking_skips_padding_and_mixes_mask_random_kept():
    torch.manual_seed(0)
    model = MaskedByteModel(encoder=BiXTSequenceEncoder(max_len=400, update_tokens_last=True, **TINY)).eval()
    ids = torch.randint(1, 257, (4, 400))
    ids[:, 300:] = 0
    out = model(ids)
    chosen = out["mask"]
    assert not chosen[:, 300:].any() and abs(float(chosen.float().sum()) / (4 * 300) - 0.15) < 0.01
    masked_share = float(out["masked"].sum()) / float(chosen.sum())
    changed = float(((out["input"] != ids) & chosen & ~out["masked"]).sum()) / float(chosen.sum())
    assert 0.7 < masked_share < 0.9 and 0.04 < changed < 0.16
    assert out["logits"].shape == (4, 400, 257) and torch.isfinite(model.loss(out))


def test_byte_head_reads_its_context_of_real_tokens_only():
    torch.manual_seed(0)
    head = ByteHead(dim=8, vocab_size=5, context=2)
    tokens, real = torch.randn(1, 10, 8), torch.ones(1, 10, dtype=torch.bool)
    real[:, 8:] = False
    base = head(tokens, real)
    moved = tokens.clone()
    moved[:, 4] += torch.randn(8)
    changed = (head(moved, real) - base).abs().amax(-1)[0] > 0
    assert changed.tolist() == [False, False, True, True, True, True, True, False, False, False]
    padding = tokens.clone()
    padding[:, 8:] = 5.0  # what padding tokens hold never reaches a real one
    assert torch.equal(head(padding, real)[:, :8], base[:, :8])
    plain = ByteHead(dim=8, vocab_size=5, context=0)
    assert (plain(moved, real) - plain(tokens, real)).abs().amax(-1)[0].nonzero().flatten().tolist() == [4]


def test_byte_picture_writes_bytes_or_the_tokens_of_a_token_vocabulary(tmp_path):
    from bixt.tasks.pretrain import byte_picture

    chosen = torch.tensor([[False, True, False, False]])
    outputs = dict(target=torch.tensor([[1, 2, 3, 0]]), input=torch.tensor([[1, 4, 3, 0]]), mask=chosen,
                   masked=chosen, logits=torch.nn.functional.one_hot(torch.tensor([[1, 3, 3, 0]]), 5).float())
    byte_picture(None, outputs, tmp_path / "tokens.txt", id_tokens=["<pad>", "[MAX", "9", "]", "4"])
    assert (tmp_path / "tokens.txt").read_text().splitlines()[:4] == [
        "original:  [MAX 9 ]", "input:     [MAX _ ]", "predicted: [MAX ] ]", "masked:    '9' -> ']'"]
    byte_picture(None, outputs, tmp_path / "bytes.txt")  # ids are bytes + 1
    assert (tmp_path / "bytes.txt").read_text().splitlines()[:2] == ["original:  \x00\x01\x02", "input:     \x00_\x02"]


# ----------------------------------------------------------------------------- data
def test_unlabelled_folders_refuse_empty_input_and_are_only_read(tmp_path):
    with pytest.raises(DataError, match="holds no readable images"):
        image_folder_data(root=str(tmp_path), img_size=16, val_fraction=0.5, mean=[0.5] * 3, std=[0.5] * 3, aug={})
    with pytest.raises(DataError, match="holds no .txt files"):
        text_files_data(root=str(tmp_path), max_len=16, val_fraction=0.5)
    (tmp_path / "a.txt").write_text("hello world\n\nsecond line\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    data = text_files_data(root=str(tmp_path), max_len=8, val_fraction=0.5)
    assert len(data.train) + len(data.val) >= 2 and data.val[0][0].tolist() == [b + 1 for b in b"hello wo"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    text = embedded_text_data(seed=0, train_size=5, val_size=3, num_topics=2, max_len=32)
    assert (len(text.train), len(text.val)) == (5, 3)


def test_hf_images_need_no_label_column_and_hold_out_rows_without_a_val_split(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(6)]
    path = tmp_path / "hf"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"image": images}, features=datasets.Features({"image": datasets.Image()}))}).save_to_disk(str(path))
    kw = dict(path=str(path), load_kwargs={}, image_column="image", train_split="train", img_size=16,
              on_bad_image="fail", mean=[0.5] * 3, std=[0.5] * 3,
              aug=dict(scale=[0.6, 1.0], ratio=[0.75, 1.33], hflip=0.5, color_jitter=None, auto_augment=None,
                       interpolation="bicubic", re_prob=0.0, crop_pct=1.0))
    data = hf_images_data(val_split=None, val_fraction=0.5, **kw)
    assert (len(data.train), len(data.val)) == (3, 3)
    image, label = data.val[0]
    assert image.shape == (3, 16, 16) and label == 0
    with pytest.raises(KeyError, match="no split 'validation'.*data.val_split=null"):  # a split it lacks
        hf_images_data(val_split="validation", val_fraction=0.5, **kw)
    with pytest.raises(KeyError, match="no column 'img'"):
        hf_images_data(val_split=None, val_fraction=0.5, **{**kw, "image_column": "img"})


def test_aan_documents_are_read_once_each_and_the_folder_only_read(tmp_path):
    rows = {"train": ["1\tA\tB\tb'first doc'\tb'second doc'", "0\tA\tC\tb'first doc'\tb'third'"],
            "eval": ["1\tA\tD\tb'first doc'\tb'held out'"]}
    for split, lines in rows.items():
        (tmp_path / f"new_aan_pairs.{split}.tsv").write_text("\n".join(lines) + "\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    data = aan_documents_data(root=str(tmp_path), cache_dir=str(tmp_path.parent / "cache"), max_len=6)
    text = lambda ids: bytes(int(i) - 1 for i in ids)  # noqa: E731
    assert sorted(text(data.train[i][0]) for i in range(len(data.train))) == [b"first ", b"second", b"third"]
    assert [text(data.val[i][0]) for i in range(len(data.val))] == [b"held o"]  # A is a train document
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with pytest.raises(FileNotFoundError, match="new_aan_pairs.train.tsv"):
        aan_documents_data(root=str(tmp_path / "nowhere"), cache_dir=None, max_len=6)


# ----------------------------------------------------------------------------- pre-train, then fine-tune
def _image_folder(root):
    rng = np.random.default_rng(0)
    for i in range(12):
        folder = root / ("cats" if i % 2 else "dogs")  # class folders: labels are ignored
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _checked(result):
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


IMAGE_ENCODER = ["model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.num_latents=4",
                 "model.encoder.num_heads=2"]


@pytest.mark.e2e
def test_image_pretraining_feeds_imagenet_and_ade20k(tmp_path):
    data = _image_folder(tmp_path / "images")
    before = sorted(str(p) for p in data.rglob("*"))
    run = tmp_path / "pre"
    log = _checked(run_task_module("bixt.tasks.pretrain", [
        "data=folder", f"data.root={data}", "data.img_size=32", "data.val_fraction=0.25", "trainer.num_workers=0",
        "trainer.epochs=2", "trainer.batch_size=4", *IMAGE_ENCODER, f"trainer.run_dir={run}"], tmp_path))
    assert "val/loss" in log and (run / "recon" / "epoch_002.png").is_file()
    assert sorted(str(p) for p in data.rglob("*")) == before  # the data folder is never written
    pretrained = read_state_dict(run / "best.pth")

    # timm loads the image backbone from it (pretrained_cfg_overlay), dropping the decoder and mask token
    model = timm.create_model("bixt_ti_l64_p16", pretrained=True, pretrained_cfg_overlay=dict(file=str(run / "best.pth")),
                              num_classes=3, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_latents=4)
    torch.testing.assert_close(model.state_dict()["encoder.latents"], pretrained["backbone.encoder.latents"])

    # ImageNet: a frozen look at the weights through eval of the untrained fine-tune (lr 0)
    ft = tmp_path / "in"
    log = _checked(run_task_module("bixt.tasks.imagenet", [
        f"finetune_from={run / 'best.pth'}", *IMAGE_ENCODER, "data.train_size=8", "data.val_size=8",
        "trainer.epochs=1", "trainer.batch_size=4", "optim.lr=0", "optim.warmup_lr=0", "optim.min_lr=0",
        f"trainer.run_dir={ft}"], tmp_path))
    assert re.search(r"finetune_from: loaded \d+ of \d+ backbone tensors", log)
    assert "outside backbone.*" in log and "layer 1's token update (one-sided in this model)" in log
    assert "head.weight, head.bias) are not in a pre-training checkpoint" in log
    tuned = read_state_dict(ft / "last.pth")
    torch.testing.assert_close(tuned["encoder.latents"], pretrained["backbone.encoder.latents"])
    torch.testing.assert_close(tuned["encoder.blocks.1.cross.attn.r_latents.weight"],
                               pretrained["backbone.encoder.blocks.1.cross.attn.rv_latents.weight"][:32])

    seg = tmp_path / "seg"
    log = _checked(run_task_module("bixt.tasks.ade20k_semseg", [
        f"finetune_from={run / 'best.pth'}", *IMAGE_ENCODER, "trainer.max_steps=1", "trainer.epochs=1",
        "optim.lr=0", "optim.warmup_lr=0", "optim.min_lr=0", "data.train_size=4", "data.val_size=4",
        f"trainer.run_dir={seg}"], tmp_path))
    assert re.search(r"finetune_from: loaded \d+ of \d+ backbone tensors", log) and "layer 1 (after the last" in log
    tuned = read_state_dict(seg / "last.pth")
    torch.testing.assert_close(tuned["backbone.patch_embed.proj.weight"],
                               pretrained["backbone.patch_embed.proj.weight"])

    refused = run_task_module("bixt.tasks.modelnet40_cls", [f"finetune_from={run / 'best.pth'}"], tmp_path)
    assert refused.returncode != 0
    assert "is a pre-training checkpoint for images, this task's model reads points" in refused.stderr


@pytest.mark.e2e
def test_point_and_byte_pretraining_feed_modelnet_and_listops(tmp_path):
    points = ["model.encoder.depth=2", "model.tokenizer.num_groups=8", "model.tokenizer.group_size=8"]
    run = tmp_path / "pts"
    _checked(run_task_module("bixt.tasks.pretrain", [
        "modality=points", "data.train_size=16", "data.test_size=8", "data.num_points=64", "trainer.epochs=1",
        "trainer.batch_size=8", *points, f"trainer.run_dir={run}"], tmp_path))
    assert (run / "recon" / "epoch_001.png").is_file()
    ft = tmp_path / "mn"
    log = _checked(run_task_module("bixt.tasks.modelnet40_cls", [
        f"finetune_from={run / 'best.pth'}", *points, "data.train_size=16", "data.test_size=8", "data.num_points=64",
        "trainer.epochs=1", "optim.lr=0", "optim.warmup_lr=0", "optim.min_lr=0", f"trainer.run_dir={ft}"], tmp_path))
    assert re.search(r"finetune_from: loaded \d+ of \d+ backbone tensors", log)
    torch.testing.assert_close(read_state_dict(ft / "last.pth")["tokenizer.local_mlp.0.weight"],
                               read_state_dict(run / "best.pth")["backbone.tokenizer.local_mlp.0.weight"])

    run = tmp_path / "bytes"
    log = _checked(run_task_module("bixt.tasks.pretrain", [
        "modality=bytes", "data.train_size=16", "data.val_size=8", "trainer.epochs=1", "trainer.batch_size=8",
        f"trainer.run_dir={run}"], tmp_path))
    assert "val/masked_acc" in log and (run / "recon" / "epoch_001.txt").read_text().startswith("original:")
    ft = tmp_path / "lo"
    log = _checked(run_task_module("bixt.tasks.lra_listops", [
        f"finetune_from={run / 'best.pth'}", "data.train_size=16", "data.val_size=8", "data.test_size=8",
        "trainer.epochs=1", "optim.lr=0", "optim.warmup_lr=0", "optim.min_lr=0", f"trainer.run_dir={ft}"], tmp_path))
    assert "token table of another vocabulary" in log
    torch.testing.assert_close(read_state_dict(ft / "last.pth")["encoder.encoder.latents"],
                               read_state_dict(run / "best.pth")["backbone.encoder.latents"])


def test_two_sided_layer_loads_into_a_one_sided_one_with_its_r_half():
    from bixt.models.bixt_image import BiXT

    pre = image_model()
    classifier = BiXT(img_size=16, patch_size=4, num_classes=3, embed_dim=32, depth=2, num_latents=4, num_heads=2)
    checkpoint = {"state_dict": pre.state_dict(), "pretraining": {"modality": "images"}}
    report = load_weights(classifier, checkpoint, within="backbone")
    assert "layer 1's token update (one-sided in this model)" in str(report)
    torch.testing.assert_close(classifier.encoder.blocks[1].cross.attn.r_latents.weight,
                               pre.backbone.encoder.blocks[1].cross.attn.rv_latents.weight[:32])


def test_latent_decoder_encodes_the_visible_tokens_only():
    model = image_model(style="latent_decoder", mask_ratio=0.75)
    seen = []
    model.backbone.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    out = model(torch.randn(2, 3, 16, 16))
    assert seen == [4] and out["pred"].shape == (2, 16, 4 * 4 * 3)  # 16 tokens, 12 masked
    model.loss(out).backward()
    assert model.mask_token.grad.abs().sum() > 0 and model.backbone.encoder.latents.grad.abs().sum() > 0
