"""`make figures`: the README's figures, from fresh runs of the shipped studies.

Each study (experiments/learning_curve.yaml, experiments/methods.yaml) runs as a user runs
it, `transferlab-train -cn NAME`, into a new MLflow store in a temporary folder; its sweep
draws its report at its end (report/figure.png and .svg, as the study declares with
`report.*`). Those are copied into docs/ as <study>.png / .svg, with the report (its tables)
and its validation curves beside them, each PNG checked under 200 KB; the README's block
between the FIGURES markers is rewritten with the figures and the command, date and commit
that produced them.

Run from the repository root: `.venv/bin/python -m experiments.make_figures [STUDY ...]`
(default: both; here learning_curve took ~15 min and methods ~28, beside the test suite).
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STUDIES = ("learning_curve", "methods")
DOCS = Path("docs")
README = Path("README.md")
BEGIN, END = "<!-- FIGURES: written by `make figures` -->", "<!-- /FIGURES -->"
MAX_PNG_BYTES = 200_000
TRAIN = Path(sys.executable).with_name("transferlab-train")


def main(studies: list[str]) -> None:
    unknown = sorted(set(studies) - set(STUDIES))
    if unknown:
        sys.exit(f"error: no study {unknown[0]}; make figures draws {', '.join(STUDIES)}")
    with tempfile.TemporaryDirectory(prefix="transferlab-figures-") as scratch:
        for study in studies or STUDIES:
            run_study(study, Path(scratch))
    write_readme_block()


def run_study(study: str, scratch: Path) -> None:
    """The study's sweep in its own store; its report's figure copied into docs/."""
    sweep_dir = scratch / study
    command = [
        str(TRAIN),
        "-cn",
        study,
        f"tracking.uri=sqlite:///{scratch / 'mlflow.db'}",
        f"feature_cache.dir={scratch / 'features'}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    print(f"make figures: transferlab-train -cn {study}", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    report = sweep_dir / "report"
    names = {  # report file -> its name in docs/
        "figure.png": f"{study}.png",
        "figure.svg": f"{study}.svg",
        "val_curves.png": f"{study}_val_curves.png",
    }
    for name, copy in names.items():
        shutil.copyfile(report / name, DOCS / copy)
        size = (DOCS / copy).stat().st_size
        if copy.endswith(".png") and size >= MAX_PNG_BYTES:
            sys.exit(f"error: docs/{copy} is {size} bytes; the README takes < {MAX_PNG_BYTES}")
    text = (report / "report.md").read_text()
    for name, copy in names.items():
        text = text.replace(f"]({name})", f"]({copy})")
    (DOCS / f"{study}_report.md").write_text(text)


def write_readme_block() -> None:
    """The figures found in docs/, each with the command, date and commit that drew it."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    today = datetime.date.today().isoformat()
    lines = [BEGIN]
    for study in STUDIES:
        if (DOCS / f"{study}.png").exists():
            lines += [
                "",
                f"![{study}](docs/{study}.png)",
                "",
                f"*`transferlab-train -cn {study}` (all its runs, tables: "
                f"[docs/{study}_report.md](docs/{study}_report.md)); drawn by `make figures` "
                f"on {today} at commit {commit}, on this 2-CPU machine.*",
            ]
    lines.append(END)
    text = README.read_text()
    block = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not block.search(text):
        sys.exit(f"error: README.md has no {BEGIN} ... {END} block")
    README.write_text(block.sub(lambda _: "\n".join(lines), text))


if __name__ == "__main__":
    main(sys.argv[1:])
