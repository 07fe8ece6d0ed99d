"""Gemma's tokenizer.json written back as SentencePiece (toolkit/model/spm.py), so that the exported GGUF
tokenises as the student was trained and evaluated: same ids as transformers, characters outside the vocabulary
(鄠 of the table's 鄠邑区) as byte pieces rather than nothing."""

import json

import pytest

from conftest import ROOT
from toolkit.io.jsonl import read_jsonl
from toolkit.model.spm import write_spm

DATA = ROOT / "datasets" / "logistics_zh"
# Characters Gemma's vocabulary lacks (byte fallback) next to ones it has, and runs of spaces.
HARD = ["陕西省西安市鄠邑区 文三路 1号", "收件人  王五\t138 0000 0000", "a  b   c", "邡 郾 鄄"]


def strings() -> list[str]:
    rows = read_jsonl(DATA / "test.jsonl") + read_jsonl(DATA / "test_unseen.jsonl")
    return HARD + [r["text"] for r in rows] + [json.dumps(r["label"], ensure_ascii=False) for r in rows]


def test_sentencepiece_tokenises_as_transformers(gemma, tmp_path):
    import sentencepiece
    from transformers import AutoTokenizer

    assert write_spm(gemma, tmp_path)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(gemma)
    assert sp.vocab_size() == len(hf)
    assert sp.is_byte(sp.encode("鄠")[0])  # not in the vocabulary: its UTF-8 bytes
    differ = [s for s in strings() if sp.encode(s) != hf(s, add_special_tokens=False)["input_ids"]]
    assert not differ, differ[:3]


def test_a_byte_level_tokenizer_gets_none(smollm2, gemma, tmp_path):
    assert not write_spm(smollm2, tmp_path)  # GPT-2 byte-level BPE: the converter reads tokenizer.json as it is
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "tokenizer.json").write_bytes((gemma / "tokenizer.json").read_bytes())
    (tmp_path / "own" / "tokenizer.model").write_bytes(b"theirs")
    assert not write_spm(tmp_path / "own", tmp_path)  # a folder's own tokenizer.model is the converter's to read
    assert not (tmp_path / "tokenizer.model").exists()


@pytest.mark.slow
def test_the_exported_gguf_tokenises_as_transformers(gemma, tmp_path):
    """Through llama.cpp's converter (q8_0) and llama.cpp's tokenizer. Before, the converter wrote a GPT-2
    vocabulary: 鄠 could not be tokenised, so a grammar could not let 鄠邑区 through."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from toolkit.deploy.export import write_gguf

    out = tmp_path / "gemma-q8_0.gguf"
    write_gguf(gemma, "q8_0", out, tmp_path / "convert.log")
    llm = Llama(str(out), vocab_only=True, verbose=False)
    hf = AutoTokenizer.from_pretrained(gemma)
    differ = [s for s in strings()
              if llm.tokenize(s.encode(), add_bos=False, special=False) != hf(s, add_special_tokens=False)["input_ids"]]
    assert not differ, differ[:3]
    assert llm.detokenize(llm.tokenize("鄠邑区".encode(), add_bos=False)).decode() == "鄠邑区"
