"""A recipe, a bake-off spec or an output folder may come from someone else (issue 29): nothing in one runs code,
writes outside its folder or through a planted link without the user's consent on the command line, and every
file a recipe names is checked when it loads, before anything is paid for. The audit's cases, each reproduced."""

import json
import os
import time

import pytest

from conftest import RECIPE, write_recipe
from teacher_server import TeacherServer
from toolkit.cli import main
from toolkit.errors import StageError
from toolkit.jsonl import DataError, read_jsonl, write_jsonl
from toolkit.recipe import load_recipe

KEY = "sk-consent-0a1b2c3d"


def planted(folder, name, target_text="precious\n"):
    """A link `folder/name` to a file outside the folder that xtk must never write."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder.parent / f"victim-{name.strip('.')}"
    target.write_text(target_text)
    (folder / name).symlink_to(target)
    return target


# --- planted links --------------------------------------------------------------------------------------------

def test_a_run_folder_whose_lock_is_a_link_is_refused_and_the_file_kept(tmp_path, capsys):
    run = tmp_path / "run"
    victim = planted(run, ".xtk.lock")
    assert main(["report", str(RECIPE), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert ".xtk.lock is a link" in err and victim.read_text() == "precious\n"


def test_temporary_files_planted_as_links_are_not_followed(tmp_path, monkeypatch):
    from toolkit.pipeline import open_run

    run = tmp_path / "run"
    victims = [planted(run, "manifest.json.tmp"), planted(run, "manifest.json.lock")]
    with pytest.raises(StageError, match="manifest.json.lock is a link"):
        with open_run(load_recipe(RECIPE, "cpu"), run):
            pass
    (run / "manifest.json.lock").unlink()
    with open_run(load_recipe(RECIPE, "cpu"), run) as ctx:
        ctx.manifest.record("data", note="x")
    assert all(v.read_text() == "precious\n" for v in victims)
    manifest = run / "manifest.json"
    assert not manifest.is_symlink() and json.loads(manifest.read_text())["stages"]["data"]["note"] == "x"


def test_labels_never_go_through_a_planted_link(tmp_path, pool, monkeypatch):
    from toolkit.label import run_label

    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    rows = pool[:3]
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    out = tmp_path / "out"
    summary_victim = planted(out, "label_summary.json.tmp")
    with TeacherServer({r["text"]: r["label"] for r in rows}) as server:
        run_label(load_recipe(RECIPE), raw, out, base_url=server.base_url)
        assert summary_victim.read_text() == "precious\n"
        summary = out / "label_summary.json"
        assert not summary.is_symlink() and json.loads(summary.read_text())["accepted"] == 3
        # a journal that is a link is refused, never appended to (nor repaired) through the link
        (out / "labelled.jsonl").unlink()
        journal_victim = planted(out, "labelled.jsonl", "")
        with pytest.raises(DataError, match="labelled.jsonl: is a link"):
            run_label(load_recipe(RECIPE), raw, out, base_url=server.base_url)
    assert journal_victim.read_text() == ""
