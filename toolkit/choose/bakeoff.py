"""bakeoff: which student to distil into? Every (student, recipe) pair of a spec is an ordinary xtk run, ranked
across tasks as in distil labs' study of 12 students x 8 tasks.

    xtk bakeoff bakeoffs/cpu.yaml            # runs/bakeoff/cpu/: bakeoff.md, bakeoff.json, bakeoff.png

A pair is `xtk run RECIPE --profile P OVERRIDES student.model=STUDENT` in `<out>/runs/<task>/<student>/`, plus
the base model once more with JSON-schema guided decoding (a base model cannot be judged on formatting alone).
Finished stages are skipped by the run itself, so a finished pair trains nothing again and an interrupted
bake-off resumes where it stopped. Pairs run one after another, or one per GPU side by side where several are
visible. Each task is scored by one metric (task_metric), and the students are ranked per task on the fine-tuned
score, the base score and tunability (fine-tuned minus base), with mean ranks over tasks and their 95%
intervals (toolkit/maths/ranking.py), and each fine-tuned student is tested against the teacher where one was
evaluated.

The spec and its pairs are read in bakeoff_spec.py, the pairs run in bakeoff_pairs.py, their evaluations become
figures in bakeoff_scores.py and outputs in bakeoff_report.py; this module runs the whole.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.choose.bakeoff_pairs import run_pairs
from toolkit.choose.bakeoff_report import write_outputs
from toolkit.choose.bakeoff_scores import collect
from toolkit.choose.bakeoff_spec import Bakeoff
from toolkit.io.errors import StageError
from toolkit.io.locks import folder_lock
from toolkit.io.runner import tail


def run_bakeoff(b: Bakeoff) -> list[Path]:
    """Run (or resume) every pair, then rank: bakeoff.json, bakeoff.md and bakeoff.png in the bake-off folder."""
    with folder_lock(b.out, "bakeoff"):
        failed = run_pairs(b)
        if failed:
            raise StageError("pairs that failed (re-run the same command to resume; finished pairs are reused):\n"
                             + "\n".join(f"  {p.task} x {p.student.name}: {log}\n{tail(log, 25)}" for p, log in failed))
        return write_outputs(b, collect(b))
