"""`xtk eval` refuses what it cannot use with a clear message (exit 2), before loading any model."""

from conftest import RECIPE
from toolkit.cli import main
from toolkit.train.swift import free_port  # closed again at once: nothing listens there


def test_unknown_model_path(tmp_path, capsys):
    code = main(["eval", str(RECIPE), "--run", str(tmp_path), "--model", str(tmp_path / "nope"),
                 "--backend", "transformers"])
    assert code == 2 and "no such model folder" in capsys.readouterr().err


def test_unreachable_endpoint(tmp_path, capsys):
    code = main(["eval", str(RECIPE), "--run", str(tmp_path), "--model", "served", "--backend", "openai",
                 "--base-url", f"http://127.0.0.1:{free_port()}/v1", "eval.limit=2"])
    assert code == 2 and "cannot reach http://127.0.0.1:" in capsys.readouterr().err


def test_test_file_without_gold(tmp_path, capsys):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"id": "1", "text": "张三 13812345678"}\n')
    code = main(["eval", str(RECIPE), "--run", str(tmp_path), "--model", "rules", "--test", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "t.jsonl:1" in err and "no gold label" in err
