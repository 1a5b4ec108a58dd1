"""A correct fast tokenizer for SentencePiece-BPE GGUF vocabularies (Gemma).

transformers' GGUF converter builds Gemma's tokenizer as a *Unigram* model over the GGUF
scores. Gemma's scores are BPE merge ranks (``-rank``), so Viterbi over them prefers single
characters and the model sees text character by character. llama.cpp (the reference for GGUF
files) tokenizes ``tokenizer.ggml.model == "llama"`` vocabularies as SentencePiece BPE:
repeatedly merge the adjacent pair whose concatenation is the highest-scoring vocabulary entry,
with byte fallback for characters not in the vocabulary. :func:`spm_bpe_tokenizer` rebuilds
exactly that as a ``tokenizers`` BPE model, with merges ranked by those scores:

* spaces become ``▁`` (no prefix space when ``add_space_prefix`` is false, as for Gemma 3);
* control tokens (``<bos>``, ``<start_of_turn>``...) are special added tokens, user-defined
  tokens (``\\n``, runs of spaces/tabs, HTML tags) are plain added tokens matched before BPE,
  as llama.cpp does;
* the tokenizer itself adds no ``<bos>``: the chat template starts with ``{{ bos_token }}``,
  so a chat-formatted prompt carries exactly one ``<bos>`` whether it is then encoded with
  special tokens on (LlamaIndex ``HuggingFaceLLM``) or off (:mod:`medllm.scoring`, TRL).
  Plain text encoded without the template gets no ``<bos>``: prepend ``tok.bos_token``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# llama.cpp token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# GGUF value types: struct formats of the scalars, then string and array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALARS |= {11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(gguf: Path) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (format v2/v3), without its tensors.

    A small reader of its own: ``gguf.GGUFReader`` builds a numpy view per array element and
    takes tens of seconds on a 262k-token vocabulary; this takes about a second.
    """
    return _read_gguf(gguf, tensors=False)[0]


def read_gguf_tensor_shapes(gguf: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """(metadata, tensor name → shape in numpy order, i.e. ggml's dimensions reversed)."""
    return _read_gguf(gguf, tensors=True)


def _read_gguf(gguf: Path, *, tensors: bool) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    import mmap
    import struct

    import numpy as np

    with gguf.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            raise ValueError(f"{gguf} is not a GGUF file")
        (n_kv,) = struct.unpack_from("<Q", mm, 16)
        off = 24

        def string() -> str:
            nonlocal off
            (n,) = struct.unpack_from("<Q", mm, off)
            off += 8 + n
            return mm[off - n : off].decode("utf-8", errors="replace")

        def value(vtype: int) -> Any:
            nonlocal off
            if vtype == _STRING:
                return string()
            if vtype == _ARRAY:
                itype, n = struct.unpack_from("<IQ", mm, off)
                off += 12
                if itype in _SCALARS and itype != 7:
                    dt = np.dtype(_SCALARS[itype])
                    arr = np.frombuffer(mm, dtype=dt, count=n, offset=off).tolist()
                    off += n * dt.itemsize
                    return arr
                return [value(itype) for _ in range(n)]
            fmt = _SCALARS[vtype]
            (v,) = struct.unpack_from(fmt, mm, off)
            off += struct.calcsize(fmt)
            return v

        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack_from("<I", mm, off)
            off += 4
            meta[key] = value(vtype)
        shapes: dict[str, tuple[int, ...]] = {}
        if tensors:
            (n_tensors,) = struct.unpack_from("<Q", mm, 8)
            for _ in range(n_tensors):
                name = string()
                (n_dims,) = struct.unpack_from("<I", mm, off)
                dims = struct.unpack_from(f"<{n_dims}Q", mm, off + 4)
                off += 4 + 8 * n_dims + 4 + 8  # dims, then the ggml type and the data offset
                shapes[name] = tuple(int(d) for d in reversed(dims))
    return meta, shapes


def _merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges implied by SentencePiece scores: (left, right) for every NORMAL token that
    splits into two NORMAL tokens, best-scoring result first."""
    normal = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    ranked: list[tuple[float, int, str, str]] = []
    for tok, i in normal.items():
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            if left in normal and right in normal:
                ranked.append((-scores[i], i, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def spm_bpe_tokenizer(gguf: Path, *, chat_template: str | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` equivalent to llama.cpp's tokenizer for ``gguf``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    meta = read_gguf_metadata(gguf)
    model = meta.get("tokenizer.ggml.model")
    if model != "llama":
        raise ValueError(f"{gguf}: tokenizer.ggml.model is {model!r}, not 'llama' (SentencePiece)")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta["tokenizer.ggml.token_type"]
    scores: list[float] = meta["tokenizer.ggml.scores"]
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))

    def name(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None else None

    unk = name("unknown")
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)},
        merges=_merges(tokens, scores, types),
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=True,
    )
    tk = Tokenizer(bpe)
    steps: list[Any] = [normalizers.Replace(" ", "▁")]
    if prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    tk.normalizer = normalizers.Sequence(steps)  # type: ignore[assignment]
    tk.pre_tokenizer = None  # type: ignore[assignment]
    tk.decoder = decoders.Sequence(  # type: ignore[assignment]
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if prefix else [])
    )
    tk.add_tokens(
        [
            AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types, strict=True)
            if ty == USER_DEFINED
        ]
    )
    tk.add_special_tokens(
        [
            AddedToken(t, normalized=False, special=True)
            for t, ty in zip(tokens, types, strict=True)
            if ty in (CONTROL, UNKNOWN)
        ]
    )

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=name("bos"),
        eos_token=name("eos"),
        unk_token=unk,
        pad_token=name("padding"),
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast
