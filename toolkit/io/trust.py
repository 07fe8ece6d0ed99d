"""What a recipe or a bake-off spec may do on its own, and what needs the user's consent on the command line.

A recipe is a file from elsewhere, like a model folder: reading one must not run code, write outside its run
or grant itself trust. So, when a recipe loads:
- code it names (`baseline`, `resolver`, `data.generator`: `module:function`) is xtk's own (`toolkit.…`) unless
  the user allows the module with `--allow-code MODULE`; an allowed module is never imported from the current
  folder (where a downloaded recipe's neighbours lie);
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
from dataclasses import dataclass
from pathlib import Path

OWN_CODE = "toolkit"  # xtk's own package: code a recipe may always name
# One path part that cannot climb out of its folder or hide: what a recipe's and a profile's name become.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CODE_KEYS = (("baseline",), ("resolver",), ("data", "generator"))


@dataclass(frozen=True)
class Consent:
    """What the user allowed on the command line; a recipe or a spec cannot grant any of it to itself."""

    code: tuple[str, ...] = ()  # modules (with their submodules) outside toolkit whose functions may run
    remote_code: bool = False  # model folders that ship their own Python code

    def allows(self, module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in (OWN_CODE, *self.code))

    def argv(self) -> list[str]:
        """The same consent as command-line flags, for a child xtk (a bake-off's pairs)."""
        flags = [w for m in self.code for w in ("--allow-code", m)]
        return flags + (["--trust-remote-code"] if self.remote_code else [])


def name_problem(value: str) -> str | None:
    """Why a name cannot be one folder name, or None."""
    if SAFE_NAME.fullmatch(value) and value not in (".", ".."):
        return None
    return (f"a plain name (letters, digits, '.', '_', '-'; at most 64; it becomes a folder name), got {value!r}: "
            "no path separators, no leading '.' or '-'")


def code_problem(ref: str, consent: Consent) -> str | None:
    """Why a recipe may not run `module:function`, or None."""
    module = ref.partition(":")[0]
    if consent.allows(module):
        return None
    return (f"{ref} is code outside xtk: a recipe runs only xtk's own functions ({OWN_CODE}.…) unless you allow "
            f"its module on the command line: --allow-code {module} (only for code you trust: it runs as you)")


def import_module(module: str):
    """Import a module a recipe names. Outside toolkit, never from the current folder: Python puts it first on
    sys.path, so a file planted beside a downloaded recipe would shadow the module the user allowed."""
    if module == OWN_CODE or module.startswith(OWN_CODE + "."):
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
