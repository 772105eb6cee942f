"""Text tokenisation: raw bytes or token strings -> ids, padding masks, and token embeddings.

Two tokenisers share the id conventions (padding id 0, real ids from 1), the padding / mask
helper (:func:`pad_sequences`) and the embedding (:class:`TokenEmbedding`):

- :class:`ByteTokenizer`: byte-level documents (LRA retrieval), described below;
- :class:`TokenVocabulary`: a fixed, small token-level vocabulary of whitespace-separated tokens
  (LRA ListOps: operators, digits, brackets), unknown tokens reported instead of mapped to an id.

The vocabulary is the 256 byte values shifted by one (byte ``b`` -> id ``b + 1``) plus the padding
id 0, as in the Long Range Arena byte-level tasks. Tokenisation runs on Hugging Face ``tokenizers``
(Rust, parallel batch encoding with truncation and padding): every byte is mapped to the Latin-1
character of the same value, so the library sees a string with exactly one character per byte,
and a BPE model without merges maps each character to its id.

Empty documents: a sequence without a single real token would leave nothing for attention to
attend to (softmax over an empty set). Every mask produced here therefore marks position 0 as
real, so an empty document is read as one "nothing" token (the padding id, whose embedding is
zero, plus the position-0 encoding) instead of failing or producing NaNs.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from tokenizers import Tokenizer, models
from torch import nn

PAD_ID = 0
NUM_BYTES = 256
VOCAB_SIZE = NUM_BYTES + 1  # 256 byte ids plus padding
PAD_TOKEN = "<pad>"

Text = Union[bytes, bytearray, memoryview, str]


def to_bytes(text: Text) -> bytes:
    """Bytes of a document: ``str`` is encoded as UTF-8, bytes-like objects are taken as they are."""
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"expected a document as bytes or str, got {type(text).__name__}")


def ensure_visible_token(token_mask: torch.Tensor) -> torch.Tensor:
    """Mark position 0 as real in every row, so empty documents keep one (placeholder) token."""
    if token_mask.shape[-1] == 0:
        raise ValueError("token_mask has no positions; pad every batch to at least length 1")
    token_mask = token_mask.clone()
    token_mask[:, 0] = True
    return token_mask


class ByteTokenizer:
    """Byte-level tokeniser on Hugging Face ``tokenizers``.

    Args:
        max_len: documents are truncated to this many bytes (LRA retrieval: 4000).

    ``tok(texts)`` encodes a batch of documents (bytes or str) into padded ``input_ids`` (B, N) int64
    and ``token_mask`` (B, N) bool (True = real token), N = the longest document (at most
    ``max_len``) or ``max_len`` with ``padding="max_length"``. ``tok.encode(texts)`` returns the
    unpadded, truncated ids as ``uint16`` arrays (compact storage), which ``tok.pad`` turns into a
    batch later.
    """

    def __init__(self, max_len: int = 4000) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = int(max_len)
        vocab = {PAD_TOKEN: PAD_ID}
        vocab.update({chr(b): b + 1 for b in range(NUM_BYTES)})  # chr(b) == bytes([b]).decode("latin-1")
        # No pre-tokeniser: the whole document is one "word" that BPE (without merges) splits into
        # characters, i.e. bytes, in one pass, instead of one pre-token object per character.
        self.tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        self.tokenizer.enable_truncation(max_length=self.max_len)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_len={self.max_len})"

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def _as_latin1(self, texts: Iterable[Text]) -> list[str]:
        # Cut before tokenising (one byte = one token, so this is exact) to avoid encoding bytes that
        # truncation would throw away; the library's own truncation stays on as the guarantee.
        return [to_bytes(t)[: self.max_len].decode("latin-1") for t in texts]

    def encode(self, texts: Sequence[Text]) -> list[np.ndarray]:
        """Truncated, unpadded ids of each document as ``uint16`` arrays (possibly empty)."""
        self.tokenizer.no_padding()
        encodings = self.tokenizer.encode_batch_fast(self._as_latin1(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.uint16) for e in encodings]

    def __call__(self, texts: Sequence[Text], padding: str = "longest") -> dict[str, torch.Tensor]:
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        texts = self._as_latin1(texts)
        if not texts:
            raise ValueError("cannot encode an empty batch of documents")
        longest = max(len(t) for t in texts)
        self.tokenizer.enable_padding(
            pad_id=PAD_ID, pad_token=PAD_TOKEN,
            length=self.max_len if padding == "max_length" else max(longest, 1),
        )
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        token_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)
        return {"input_ids": input_ids, "token_mask": ensure_visible_token(token_mask)}

    def decode(self, ids: Union[Sequence[int], np.ndarray, torch.Tensor]) -> bytes:
        """Bytes of a sequence of ids, padding dropped."""
        ids = np.asarray(ids.tolist() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
        return (ids[ids != PAD_ID] - 1).astype(np.uint8).tobytes()

    @staticmethod
    def pad(sequences: Sequence[Union[np.ndarray, Sequence[int], torch.Tensor]], length: Optional[int] = None):
        """Batch pre-tokenised id sequences: see :func:`pad_sequences`."""
        return pad_sequences(sequences, length)


def pad_sequences(sequences: Sequence[Union[np.ndarray, Sequence[int], torch.Tensor]], length: Optional[int] = None):
    """Batch pre-tokenised id sequences: ``(input_ids (B, N) int64, token_mask (B, N) bool)``.

    N is ``length`` or the longest sequence (at least 1); empty sequences keep position 0 visible.
    """
    lengths = [len(s) for s in sequences]
    n = length if length is not None else max(max(lengths, default=0), 1)
    if max(lengths, default=0) > n:
        raise ValueError(f"cannot pad sequences of length up to {max(lengths)} to length {n}")
    input_ids = torch.full((len(sequences), n), PAD_ID, dtype=torch.long)
    for row, (seq, size) in enumerate(zip(sequences, lengths)):
        if size:
            input_ids[row, :size] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
    token_mask = torch.arange(n).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return input_ids, ensure_visible_token(token_mask)


class UnknownTokenError(ValueError):
    """A token outside a :class:`TokenVocabulary`; ``token`` and ``position`` say which."""

    def __init__(self, token: str, position: int, vocabulary: Sequence[str]) -> None:
        self.token, self.position = token, position
        super().__init__(f"unknown token {token[:40]!r} at token {position + 1}; the vocabulary is "
                         f"{' '.join(vocabulary)}")


class TokenVocabulary:
    """A fixed token-level vocabulary: token ``tokens[i]`` -> id ``i + 1``, padding id 0.

    ``encode(text)`` splits on whitespace and returns the ids (``uint8`` while they fit, else
    ``uint16``); a token outside the vocabulary raises :class:`UnknownTokenError` (position and
    token named) instead of being mapped silently to an unknown id, since for a formal language
    such as ListOps it means the file is not what the task expects. ``drop`` lists tokens that
    are valid but not kept (ListOps: the parentheses, as LRA's tokeniser drops them).
    ``pad`` batches as :func:`pad_sequences`, ``decode`` maps ids back (padding dropped).
    """

    def __init__(self, tokens: Sequence[str], drop: Sequence[str] = ()) -> None:
        tokens = list(tokens)
        if len(set(tokens)) != len(tokens) or any(not t or t != t.strip() or " " in t for t in tokens):
            raise ValueError(f"vocabulary tokens must be distinct, non-empty and without whitespace: {tokens}")
        self.tokens = tokens
        self.ids = {t: i + 1 for i, t in enumerate(tokens)}
        self.drop = frozenset(drop)
        unknown = self.drop - set(tokens)
        if unknown:
            raise ValueError(f"tokens to drop must be in the vocabulary, got {sorted(unknown)}")
        self.dtype = np.uint8 if len(tokens) < 256 else np.uint16

    def __repr__(self) -> str:
        return f"{type(self).__name__}({' '.join(self.tokens)}, drop={sorted(self.drop)})"

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        """Number of ids including padding (the embedding table's size)."""
        return len(self.tokens) + 1

    def encode(self, text: str) -> np.ndarray:
        ids, drop = self.ids, self.drop
        out = []
        for position, token in enumerate(text.split()):
            if token in drop:
                continue
            index = ids.get(token)
            if index is None:
                raise UnknownTokenError(token, position, self.tokens)
            out.append(index)
        return np.asarray(out, dtype=self.dtype)

    def decode(self, ids: Union[Sequence[int], np.ndarray, torch.Tensor]) -> str:
        ids = ids.tolist() if isinstance(ids, (torch.Tensor, np.ndarray)) else list(ids)
        return " ".join(self.tokens[i - 1] for i in ids if i != PAD_ID)

    pad = staticmethod(pad_sequences)


def sinusoidal_positions(length: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 1-D sine/cosine position encodings (length, dim): sin on even, cos on odd channels."""
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even dim, got {dim}")
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(temperature) / dim))
    encoding = torch.zeros(length, dim)
    encoding[:, 0::2] = torch.sin(position * inv_freq)
    encoding[:, 1::2] = torch.cos(position * inv_freq)
    return encoding


class TokenEmbedding(nn.Module):
    """Token ids (B, N) -> tokens (B, N, dim): a token embedding plus position information.

    Args:
        vocab_size: number of ids, padding (id 0) included.
        dim: token width.
        max_len: longest sequence accepted (size of the position table).
        pos_embed: ``"sinusoidal"`` (fixed, unit amplitude, like the token embeddings),
            ``"learned"`` (trunc-normal init, std 0.02) or ``"none"``.
        drop_rate: dropout on the summed embeddings.

    The padding id embeds to the zero vector (``padding_idx``), so a placeholder token of an empty
    document carries position only. The table is stored as ``token_embed`` (``byte_embed`` in
    :class:`ByteEmbedding`, the name its checkpoints carry).
    """

    table_name = "token_embed"

    def __init__(self, vocab_size: int, dim: int, max_len: int = 4000, pos_embed: str = "sinusoidal",
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if pos_embed not in ("sinusoidal", "learned", "none"):
            raise ValueError(f"pos_embed must be 'sinusoidal', 'learned' or 'none', got {pos_embed!r}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size counts the padding id and needs at least one token, got {vocab_size}")
        self.vocab_size = vocab_size
        self.dim = dim
        self.max_len = max_len
        self.pos_embed_type = pos_embed
        # Unit-variance token embeddings (torch's default init) match the scale of the sinusoidal
        # positions; a small init (std 0.02) lets the positions drown the token identities after the
        # first LayerNorm, and training then stalls at chance on byte-content tasks.
        setattr(self, self.table_name, nn.Embedding(vocab_size, dim, padding_idx=PAD_ID))
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, max_len, dim))
            # small, as in ViT: positions start as a faint signal next to the unit-scale tokens
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        elif pos_embed == "sinusoidal":
            # Not saved in checkpoints: it is a pure function of (max_len, dim).
            self.register_buffer("pos_embed", sinusoidal_positions(max_len, dim).unsqueeze(0), persistent=False)
        else:
            self.pos_embed = None
        self.drop = nn.Dropout(drop_rate)

    @property
    def table(self) -> nn.Embedding:
        return getattr(self, self.table_name)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > self.max_len:
            raise ValueError(
                f"sequence length {length} exceeds the embedding's max_len={self.max_len}; truncate the "
                f"sequences (e.g. ByteTokenizer(max_len={self.max_len})) or build the model with a larger max_len"
            )
        tokens = self.table(input_ids)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed[:, :length]
        return self.drop(tokens)


class ByteEmbedding(TokenEmbedding):
    """:class:`TokenEmbedding` over the byte vocabulary (ids 1..256, padding 0)."""

    table_name = "byte_embed"

    def __init__(self, dim: int, max_len: int = 4000, pos_embed: str = "sinusoidal", drop_rate: float = 0.0) -> None:
        super().__init__(VOCAB_SIZE, dim, max_len=max_len, pos_embed=pos_embed, drop_rate=drop_rate)


def make_embedding(dim: int, vocab_size: Optional[int] = None, **kwargs) -> TokenEmbedding:
    """:class:`ByteEmbedding` for ``vocab_size=None`` (bytes), else a :class:`TokenEmbedding`."""
    return ByteEmbedding(dim, **kwargs) if vocab_size is None else TokenEmbedding(vocab_size, dim, **kwargs)
