"""What a recipe or a bake-off spec may do on its own, and what needs the user's consent on the command line.

A recipe is a file from elsewhere, like a model folder: reading one must not run code, write outside its run
or grant itself trust. So, when a recipe loads:
- code it names (`baseline`, `data.generator`: `module:function`) is a function xtk registered for
  that key (`recipe_code`: the shipped tasks' baselines and generators, the classical baselines), never
  any other of xtk's functions, unless the user allows the module with `--allow-code MODULE`; an allowed module
  is never imported from the current folder (where a downloaded recipe's neighbours lie);
- words it adds to a command xtk runs (`train.extra_args` for `swift sft`) are flags on xtk's list of those that only
  change how the model trains, with their values; another flag (`--external_plugins x.py` makes ms-swift import a
  file) needs `--allow-code swift:FLAG`;
- every file it names (prompts, choices files, data and test files, a DeepSpeed config) lies, links followed, inside
  the recipe's project (the folder holding its recipes/, or its own folder), unless the user allows another folder
  with `--allow-path DIR`: a prompt or choices file is sent to the teacher the recipe names;
- the variable it reads the teacher's key from is one named `*_API_KEY`, unless the user names another with
  `--api-key-env NAME`: the key goes to the recipe's base_url, and `GITHUB_TOKEN` is nobody's teacher key;
- `student.trust_remote_code` takes effect only with `--trust-remote-code` on the command line;
- names that become paths (the recipe's name, the profile's) are one plain path part;
- every file it names (prompts, choices files, data and test files) is read and checked before anything is
  paid for or trained (toolkit/flow/check.py).
Each refusal names the file, the key and its line, and the flag that would allow it. docs/trust.md says the same
for users.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

OWN_CODE = "toolkit"  # xtk's own package: its registered functions are what a recipe may name without consent
# One path part that cannot climb out of its folder or hide: what a recipe's and a profile's name become.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CODE_KEYS = (("baseline",), ("data", "generator"))
# The functions of xtk a recipe may name, by the last part of the key that names them: registered where they are
# defined (@recipe_code("baseline")), so that `baseline: toolkit.io.jsonl:write_json` names nothing.
RECIPE_CODE: dict[str, dict[str, Callable]] = {loc[-1]: {} for loc in CODE_KEYS}


def recipe_code(kind: str):
    """Register a function of xtk as one a recipe may name in its `kind` key (baseline, generator)."""

    def register(function: Callable) -> Callable:
        RECIPE_CODE[kind][f"{function.__module__}:{function.__name__}"] = function
        return function

    return register


def own(module: str) -> bool:
    return module == OWN_CODE or module.startswith(OWN_CODE + ".")


@dataclass(frozen=True)
class Consent:
    """What the user allowed on the command line; a recipe or a spec cannot grant any of it to itself."""

    code: tuple[str, ...] = ()  # modules (with their submodules) outside toolkit whose functions may run, and
    # PROGRAM:FLAG, a flag a recipe may pass to a program xtk runs beyond those it vouches for
    remote_code: bool = False  # model folders that ship their own Python code
    paths: tuple[str, ...] = ()  # folders outside the recipe's project whose files the recipe may name
    key_env: str | None = None  # the teacher key's variable, given on the command line (--api-key-env)

    def allows(self, module: str) -> bool:
        """Whether the user allowed the functions of `module` (a module outside xtk) to run."""
        return any(module == m or module.startswith(m + ".") for m in self.code)

    def allows_flag(self, program: str, flag: str) -> bool:
        return f"{program}:{flag}" in self.code

    def argv(self) -> list[str]:
        """The same consent as command-line flags, for a child xtk (a bake-off's pairs)."""
        flags = [w for m in self.code for w in ("--allow-code", m)]
        flags += [w for p in self.paths for w in ("--allow-path", p)]
        flags += ["--api-key-env", self.key_env] if self.key_env else []
        return flags + (["--trust-remote-code"] if self.remote_code else [])


@dataclass(frozen=True)
class NamesFiles:
    """Marks a recipe key (in typing.Annotated) whose value names files, one or a list: each must lie inside the
    recipe's project (path_problem), checked where the recipe loads. `only` picks the values that are file names
    (train.deepspeed names a .json file, or one of ms-swift's presets)."""
    only: Callable[[str], bool] | None = None


FILE = NamesFiles()
# An API key's variable by the providers' convention (DASHSCOPE_API_KEY, OPENAI_API_KEY): what a recipe may name.
API_KEY_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*_API_KEY")


def path_problem(path: Path, root: Path, consent: Consent) -> str | None:
    """Why a recipe may not name the file `path`, or None: it must lead (links followed) inside the recipe's project
    `root`, or inside a folder the user allowed on the command line."""
    real = path.resolve()
    if any(real.is_relative_to(Path(folder).resolve()) for folder in (root, *consent.paths)):
        return None
    to = f" (to {real})" if real != path.absolute() else ""
    return (f"{path} leads outside the recipe's project {root}{to}: a recipe names only files of its own project "
            f"(a prompt or a choices file is sent to the teacher it names), unless you allow their folder on the "
            f"command line: --allow-path {real.parent}")


def key_env_problem(name: str, consent: Consent) -> str | None:
    """Why a recipe may not read the teacher's key from the variable `name`, or None."""
    if API_KEY_ENV.fullmatch(name) or name == consent.key_env:
        return None
    return (f"${name} is not an API key's variable (NAME_API_KEY, e.g. DASHSCOPE_API_KEY): a recipe names only "
            "those, so that it cannot send another secret of yours ($GITHUB_TOKEN, $AWS_SECRET_ACCESS_KEY) to the "
            f"endpoint it names; to use ${name}, give it on the command line: --api-key-env {name}")


def name_problem(value: str) -> str | None:
    """Why a name cannot be one folder name, or None."""
    if SAFE_NAME.fullmatch(value) and value not in (".", ".."):
        return None
    return (f"a plain name (letters, digits, '.', '_', '-'; at most 64; it becomes a folder name), got {value!r}: "
            "no path separators, no leading '.' or '-'")


def code_problem(ref: str, kind: str, consent: Consent) -> str | None:
    """Why a recipe may not run `module:function` as its `kind` (baseline, generator), or None. xtk's
    own module is imported to see what it registers (its imports run no recipe's code)."""
    module = ref.partition(":")[0]
    if own(module):
        try:
            import_module(module)
        except ImportError as exc:
            return f"{ref}: cannot import {module} ({exc})"
        if ref in RECIPE_CODE[kind]:
            return None
        known = ", ".join(sorted(RECIPE_CODE[kind])) or "none"
        return (f"{ref} is not one of xtk's {kind} functions ({known}): a recipe names only those, or code of "
                "your own that you allow on the command line (--allow-code MODULE)")
    if consent.allows(module):
        return None
    return (f"{ref} is code outside xtk: a recipe runs only xtk's registered functions unless you allow its "
            f"module on the command line: --allow-code {module} (only for code you trust: it runs as you)")


def _number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def argv_problem(words: list[str], allowed: dict[str, str | None], program: str, consent: Consent) -> str | None:
    """Why a recipe may not add `words` to `program`'s command line, or None. Each word is a flag (`--name` or
    `--name=value`) of `allowed` or of the user's consent (--allow-code PROGRAM:NAME), or a value after one; where
    `allowed` gives a pattern, the flag's values must match it. A word that starts with '-' and is not a number is a
    flag wherever it stands: the program's parser reads it as one (and takes a prefix of a flag for the flag)."""
    flag = None
    for word in words:
        if word.startswith("-") and not _number(word):
            flag, given, value = word[2:].partition("=") if word.startswith("--") else (word, "", "")
            if flag not in allowed and not consent.allows_flag(program, flag):
                return (f"{word!r} is not one of the {program} flags a recipe may pass on its own (those that only "
                        f"change how the model trains; others can make {program} import code, read or write other "
                        f"files, or send data out): allow it on the command line with --allow-code {program}:{flag} "
                        "(only for a recipe you trust)")
            if not given:
                continue
        elif flag is None:
            return f"{word!r} stands before any flag: expected --name value ..."
        else:
            value = word
        pattern = allowed.get(flag)
        if pattern and not re.fullmatch(pattern, value):
            return f"--{flag} {value!r}: expected one of {pattern.replace('|', ', ')}"
    return None


def import_module(module: str):
    """Import a module a recipe names. Outside toolkit, never from the current folder: Python puts it first on
    sys.path, so a file planted beside a downloaded recipe would shadow the module the user allowed."""
    if own(module):
        return importlib.import_module(module)
    here = Path.cwd().resolve()
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != here]
    try:
        return importlib.import_module(module)
    finally:
        sys.path[:] = saved


def inside(folder: Path, name: str, what: str) -> Path:
    """`folder/name` for a file name from a recipe's code or data; ValueError when it would land elsewhere."""
    path = Path(name)
    if not name or path.is_absolute() or ".." in path.parts or \
            not (folder / path).resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{what} {name!r} is not a file name inside {folder}")
    return folder / path
