"""Byte tokeniser, byte embedding, retrieval head and the two document encoders (BiXT, Transformer)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bixt.baselines.transformer import TransformerDocumentEncoder, masked_mean
from bixt.heads.retrieval import RetrievalHead
from bixt.models.retrieval import DualEncoderRetriever
from bixt.models.text import BiXTSequenceEncoder
from bixt.tokenizers.text import PAD_ID, VOCAB_SIZE, ByteEmbedding, ByteTokenizer, sinusoidal_positions


# ---------------------------------------------------------------------------------------- tokeniser
def test_tokenizer_maps_every_byte_to_byte_plus_one():
    every_byte = bytes(range(256))
    ids = ByteTokenizer(max_len=300).encode([every_byte])[0]
    assert ids.dtype == np.uint16
    np.testing.assert_array_equal(ids, np.arange(1, 257))
    assert VOCAB_SIZE == 257 and PAD_ID == 0


def test_tokenizer_encodes_str_as_utf8_and_decodes_back():
    tok = ByteTokenizer(max_len=64)
    ids = tok.encode(["é\n\tA"])[0]
    assert ids.tolist() == [0xC3 + 1, 0xA9 + 1, 0x0A + 1, 0x09 + 1, 0x41 + 1]
    assert tok.decode(ids) == "é\n\tA".encode("utf-8")


def test_tokenizer_truncates_and_pads_with_mask():
    tok = ByteTokenizer(max_len=5)
    out = tok([b"abcdefgh", b"xy"])
    assert out["input_ids"].tolist() == [[98, 99, 100, 101, 102], [121, 122, 0, 0, 0]]
    assert out["token_mask"].tolist() == [[True] * 5, [True, True, False, False, False]]
    padded = tok([b"xy"], padding="max_length")
    assert padded["input_ids"].shape == (1, 5)
    longest = ByteTokenizer(max_len=100)([b"abc", b"a"])
    assert longest["input_ids"].shape == (2, 3)


def test_empty_documents_keep_one_visible_placeholder():
    tok = ByteTokenizer(max_len=8)
    out = tok([b"", b"ab"])
    assert out["input_ids"][0].tolist() == [0, 0]
    assert out["token_mask"].tolist() == [[True, False], [True, True]]
    only_empty = tok([b"", ""])
    assert only_empty["input_ids"].shape == (2, 1) and only_empty["token_mask"].all()
    ids, mask = ByteTokenizer.pad([np.array([], dtype=np.uint16), np.array([5, 6, 7], dtype=np.uint16)])
    assert ids.tolist() == [[0, 0, 0], [5, 6, 7]]
    assert mask.tolist() == [[True, False, False], [True, True, True]]


def test_pad_matches_library_padding_and_rejects_too_long():
    tok = ByteTokenizer(max_len=16)
    docs = [b"hello world", b"hi", b"a longer document"]
    direct = tok(docs)
    ids, mask = ByteTokenizer.pad(tok.encode(docs))
    assert torch.equal(ids, direct["input_ids"]) and torch.equal(mask, direct["token_mask"])
    with pytest.raises(ValueError, match="cannot pad"):
        ByteTokenizer.pad([np.arange(1, 10)], length=4)


def test_tokenizer_rejects_non_text():
    with pytest.raises(TypeError, match="bytes or str"):
        ByteTokenizer(max_len=4).encode([123])


# ---------------------------------------------------------------------------------------- embedding
def test_sinusoidal_positions_layout():
    pe = sinusoidal_positions(10, 8)
    assert pe.shape == (10, 8)
    assert torch.allclose(pe[0, 0::2], torch.zeros(4)) and torch.allclose(pe[0, 1::2], torch.ones(4))
    assert torch.allclose(pe[3, 0], torch.sin(torch.tensor(3.0)))


@pytest.mark.parametrize("pos_embed", ["sinusoidal", "learned", "none"])
def test_byte_embedding_pad_id_carries_position_only(pos_embed):
    embed = ByteEmbedding(16, max_len=12, pos_embed=pos_embed)
    ids = torch.tensor([[0, 5, 0]])
    tokens = embed(ids)
    assert tokens.shape == (1, 3, 16)
    position = embed.pos_embed[0, :3] if embed.pos_embed is not None else torch.zeros(3, 16)
    assert torch.allclose(tokens[0, 0], position[0]) and torch.allclose(tokens[0, 2], position[2])
    assert not torch.allclose(tokens[0, 1], position[1])


def test_byte_embedding_rejects_sequences_beyond_max_len():
    with pytest.raises(ValueError, match="exceeds the embedding's max_len=4"):
        ByteEmbedding(8, max_len=4)(torch.ones(1, 5, dtype=torch.long))


# ---------------------------------------------------------------------------------------- head
def test_retrieval_head_uses_all_four_combinations():
    head = RetrievalHead(dim=3, hidden_dims=())  # a single linear layer over [u, v, u*v, u-v]
    with torch.no_grad():
        head.mlp[0].weight.zero_()
        head.mlp[0].bias.zero_()
        head.mlp[0].weight[0, 6:9] = 1.0  # class 0 reads u*v
        head.mlp[0].weight[1, 9:12] = 1.0  # class 1 reads u-v
    u, v = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 0.0, 1.0]])
    assert head(u, v).tolist() == [[5.0, 3.0]]
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        head(u, v[:, :2])


# ---------------------------------------------------------------------------------------- encoders
def _tiny_bixt() -> BiXTSequenceEncoder:
    return BiXTSequenceEncoder(dim=32, depth=2, num_latents=8, num_heads=2, max_len=64, update_tokens_last=False)


def _tiny_transformer() -> TransformerDocumentEncoder:
    return TransformerDocumentEncoder(dim=32, depth=2, num_heads=2, max_len=64)


@pytest.mark.parametrize("make_encoder", [_tiny_bixt, _tiny_transformer], ids=["bixt", "transformer"])
def test_document_encoders_ignore_padding(make_encoder):
    torch.manual_seed(0)
    encoder = make_encoder().eval()
    tok = ByteTokenizer(max_len=64)
    docs = [b"the quick brown fox", b"jumps"]
    batch = tok(docs)
    padded = tok(docs, padding="max_length")
    with torch.no_grad():
        pooled = encoder(batch["input_ids"], batch["token_mask"])
        pooled_padded = encoder(padded["input_ids"], padded["token_mask"])
        alone = encoder(*tok([docs[1]]).values())
    assert pooled.shape == (2, 32)
    torch.testing.assert_close(pooled, pooled_padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled[1:], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make_encoder", [_tiny_bixt, _tiny_transformer], ids=["bixt", "transformer"])
def test_dual_encoder_shares_one_encoder_and_handles_empty_documents(make_encoder):
    torch.manual_seed(0)
    model = DualEncoderRetriever(make_encoder(), RetrievalHead(32, hidden_dims=(16,))).eval()
    tok = ByteTokenizer(max_len=64)
    a, b = tok([b"first document", b""]), tok([b"second, longer document", b"x"])
    with torch.no_grad():
        logits = model(a["input_ids"], a["token_mask"], b["input_ids"], b["token_mask"])
        u = model.encode(a["input_ids"], a["token_mask"])
        v = model.encode(b["input_ids"], b["token_mask"])
        expected = model.head(u, v)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_dual_encoder_gets_gradients_end_to_end():
    torch.manual_seed(0)
    model = DualEncoderRetriever(_tiny_bixt(), RetrievalHead(32, hidden_dims=(16,)))
    tok = ByteTokenizer(max_len=64)
    a, b = tok([b"abc", b"def"]), tok([b"abd", b""])
    loss = torch.nn.functional.cross_entropy(
        model(a["input_ids"], a["token_mask"], b["input_ids"], b["token_mask"]), torch.tensor([1, 0]))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["document_encoder.embed.byte_embed.weight"].abs().sum() > 0
    assert grads["document_encoder.encoder.latents"].abs().sum() > 0


def test_masked_mean_counts_real_tokens_only():
    tokens = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(tokens, torch.tensor([[True, True, False]])).item() == 2.0
    assert masked_mean(tokens, None).item() == pytest.approx(104 / 3)


# ---------------------------------------------------------------------------------------- token vocabulary
def test_token_vocabulary_encodes_drops_and_reports_unknown_tokens():
    from bixt.tokenizers.text import TokenVocabulary, UnknownTokenError

    vocab = TokenVocabulary(["[MAX", "]", "1", "2", "("], drop=["("])
    ids = vocab.encode("( [MAX 1  2 ]")
    assert ids.tolist() == [1, 3, 4, 2] and ids.dtype == np.uint8 and vocab.vocab_size == 6
    assert vocab.decode(np.array([1, 3, 0, 0])) == "[MAX 1"
    with pytest.raises(UnknownTokenError, match=r"unknown token '7' at token 3"):
        vocab.encode("[MAX 1 7 ]")
    with pytest.raises(ValueError, match="distinct"):
        TokenVocabulary(["a", "a"])
    padded, mask = vocab.pad([vocab.encode("1"), vocab.encode("[MAX 1 ]")])
    assert padded.tolist() == [[3, 0, 0], [1, 3, 2]] and mask.tolist() == [[True, False, False], [True] * 3]


def test_token_embedding_sizes_and_byte_checkpoint_names():
    from bixt.tokenizers.text import TokenEmbedding

    embed = TokenEmbedding(18, 8, max_len=10)
    assert embed.table.num_embeddings == 18 and "token_embed.weight" in embed.state_dict()
    assert torch.equal(embed(torch.zeros(1, 3, dtype=torch.long))[0], embed.pos_embed[0, :3])
    assert "byte_embed.weight" in ByteEmbedding(8, max_len=10).state_dict()  # retrieval checkpoints keep loading
    listops = BiXTSequenceEncoder(dim=16, depth=2, num_latents=4, num_heads=2, max_len=10, vocab_size=18)
    assert listops.embed.vocab_size == 18
    assert TransformerDocumentEncoder(dim=16, depth=1, num_heads=2, max_len=10, vocab_size=18).embed.vocab_size == 18
