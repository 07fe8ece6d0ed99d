import json
import os
import time
from pathlib import Path

import pytest

from conftest import ROOT

from toolkit.io.markers import MARKER
from toolkit.model.models import ModelError, check_custom_code, pull_embedded, resolve_model


@pytest.mark.slow
def test_embedded_student_loads_in_transformers_and_knows_paris(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((smollm2 / MARKER).read_text())
    assert meta["model_type"] == "llama" and meta["template"] == "chatml"
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert model.dtype == torch.float32 and not hasattr(model.config, "quantization_config")
    assert "<|im_start|>assistant" in tok.chat_template or "im_start" in tok.chat_template
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_second_pull_is_a_no_op(smollm2):
    weights = smollm2 / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert pull_embedded("smollm2-135m-instruct") == smollm2
    assert weights.stat().st_mtime_ns == before  # not rebuilt: a no-op only hashes the GGUF


def waiting_for_a_lock(pid: int) -> bool:
    """Whether process `pid` is blocked on a file lock: /proc/locks lists each waiter as a "->" line."""
    return any("->" in line and f" {pid} " in f" {line} ".replace(":", " ")
               for line in Path("/proc/locks").read_text().splitlines())


@pytest.mark.slow
def test_a_pull_started_during_another_waits_and_uses_its_folder(tmp_path):
    """While one pull holds the model's lock (this test, converting for real), a second command's pull of the same
    model blocks on it, then finds the folder whole and current and converts nothing itself: the first one's
    folder is never moved aside under it."""
    import subprocess
    import sys

    import toolkit.model.models as models
    from toolkit.io.locks import folder_turn

    env = {**os.environ, "XTK_CACHE": str(tmp_path)}
    second = ("import toolkit.model.models as m\nreal, calls = m._pull, []\n"
              "m._pull = lambda *a: calls.append(1) or real(*a)\nprint('start', flush=True)\n"
              "print(m.pull_embedded('smollm2-135m-instruct'), len(calls))\n")
    target = tmp_path / "models" / "smollm2-135m-instruct"
    with folder_turn(target.parent):
        proc = subprocess.Popen([sys.executable, "-c", second], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "start\n"
        deadline = time.monotonic() + 300  # a bound for a stuck import only
        while not waiting_for_a_lock(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, "the second pull did not wait for the lock"
            time.sleep(0.2)
        models._pull("smollm2-135m-instruct", models.EMBEDDED["smollm2-135m-instruct"], target)
        made = (target / "model.safetensors").stat().st_mtime_ns
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and out.split() == [str(target), "0"]
    assert (target / "model.safetensors").stat().st_mtime_ns == made
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == ["smollm2-135m-instruct"]  # nothing moved aside


def test_the_pull_lock_holds_a_models_folder_moved_elsewhere_through_a_link(tmp_path):
    """A cache whose models folder is a link to another disk: the lock is the folder it leads to, so a second
    holder through the link or the real path waits (seen as not getting it at once)."""
    import fcntl

    from toolkit.io.locks import folder_turn

    (tmp_path / "disk" / "models").mkdir(parents=True)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(tmp_path / "disk" / "models")
    with folder_turn(tmp_path / "cache" / "models"):
        fd = os.open(tmp_path / "disk" / "models", os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_custom_code_is_refused_unless_opted_in(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_x.X"}}))
    with pytest.raises(ModelError, match="auto_map.*trust_remote_code"):
        check_custom_code(tmp_path, trust_remote_code=False)
    check_custom_code(tmp_path, trust_remote_code=True)
    with pytest.raises(ModelError, match="auto_map"):
        resolve_model(str(tmp_path))


def test_unknown_references_get_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no such model folder"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="neither an embedded model"):
        resolve_model("not-a-model")
    (tmp_path / "file").write_text("")
    with pytest.raises(ModelError, match="is a file, expected a model folder"):
        resolve_model(str(tmp_path / "file"))


@pytest.mark.slow
def test_a_hub_id_is_downloaded_and_checked_before_use_and_a_failure_is_one_line(tmp_path, capsys):
    """No model hub is reachable here: the download fails, and that failure is one clear line, exit 2."""
    from toolkit.cli import main

    code = main(["eval", str(ROOT / "recipes" / "logistics_zh.yaml"), "--run", str(tmp_path), "--model",
                 "nobody-xtk/no-such-model", "--backend", "transformers", "eval.limit=1"])
    err = capsys.readouterr().err
    assert code == 2 and "error: could not download nobody-xtk/no-such-model" in err and "Traceback" not in err
