"""A SentencePiece-born tokenizer.json written back as the `tokenizer.model` llama.cpp's converter reads.

transformers turns a GGUF's SentencePiece tokenizer (Gemma's) into a tokenizer.json BPE and keeps no
tokenizer.model. llama.cpp's converter, given a folder without one, writes a GPT-2 byte-level vocabulary, in
which the byte-fallback pieces (<0xE9> ...) are plain strings: a character outside the vocabulary (the 鄠 of
鄠邑区) can then be neither tokenised nor let through a grammar by the exported GGUF. Written back as a
SentencePiece BPE model, the converter writes llama.cpp's SentencePiece vocabulary instead. Each piece's score
is minus the rank of the merge that makes it, so that SentencePiece's "best-scored pair first" merges in the
order tokenizer.json's merge list does: the same tokens as transformers (checked on the shipped data sets).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from toolkit.io.jsonl import write_bytes

BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
SPACE = "\u2581"  # ▁, SentencePiece's space


def sentencepiece_born(tokenizer: dict) -> bool:
    """A tokenizer.json that is a SentencePiece BPE in disguise: byte fallback, spaces written as ▁."""
    model, normalizer = tokenizer.get("model") or {}, tokenizer.get("normalizer") or {}
    return (model.get("type") == "BPE" and bool(model.get("byte_fallback"))
            and SPACE in json.dumps(normalizer, ensure_ascii=False))


def spm_proto(tokenizer: dict) -> bytes:
    """tokenizer.json's vocabulary, merge order and special tokens as a serialised SentencePiece ModelProto."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = tokenizer["model"]
    rank: dict[str, int] = {}
    for i, merge in enumerate(model["merges"]):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        rank.setdefault(left + right, i)
    added = {t["content"]: t for t in tokenizer.get("added_tokens", [])}
    unk = model.get("unk_token")
    proto = pb.ModelProto()
    pieces = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    if [i for _, i in pieces] != list(range(len(pieces))):
        raise ValueError("tokenizer.json's vocabulary ids are not 0..n-1")
    for piece, _ in pieces:
        if piece == unk:
            kind = pb.ModelProto.SentencePiece.UNKNOWN
        elif piece in added:
            kind = pb.ModelProto.SentencePiece.CONTROL if added[piece].get("special") else \
                pb.ModelProto.SentencePiece.USER_DEFINED
        elif BYTE_PIECE.fullmatch(piece):
            kind = pb.ModelProto.SentencePiece.BYTE
        else:
            kind = pb.ModelProto.SentencePiece.NORMAL
        score = -float(rank.get(piece, len(rank))) if kind == pb.ModelProto.SentencePiece.NORMAL else 0.0
        proto.pieces.add(piece=piece, score=score, type=kind)
    spec = proto.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = pb.TrainerSpec.BPE, len(pieces), True
    # runs of spaces are pieces of their own (▁▁), as transformers merges them
    spec.split_by_whitespace, spec.allow_whitespace_only_pieces = False, True
    vocab = model["vocab"]
    spec.unk_id = vocab.get(unk, -1)
    for name, token in (("bos", "<bos>"), ("eos", "<eos>"), ("pad", "<pad>")):
        setattr(spec, f"{name}_id", vocab.get(token, -1))
    norm = proto.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces, norm.escape_whitespaces = \
        "identity", False, False, True
    return proto.SerializeToString()


def write_spm(model_dir: Path, out: Path) -> bool:
    """Write `out`/tokenizer.model from `model_dir`'s tokenizer.json where it is SentencePiece-born and the
    folder has no tokenizer.model of its own; False where nothing was written."""
    path = model_dir / "tokenizer.json"
    if (model_dir / "tokenizer.model").exists() or not path.is_file():
        return False
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    if not sentencepiece_born(tokenizer):
        return False
    write_bytes(out / "tokenizer.model", spm_proto(tokenizer))
    return True
