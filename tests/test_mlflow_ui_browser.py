"""A study as a user sees it in the MLflow UI (issue 16): a real 4-job study with scratch
baselines, `mlflow ui` on a free loopback port, and Debian's Chromium driven by playwright
(no browser download): the printed link opens in Model training mode, the study is one row
at the top level, its children are named by their swept values and show their dataset and
model.

MLflow 3.17's UI takes its mode (GenAI or Model training) from the link's `workflowType`,
else from the browser's last choice, else GenAI: an experiment's `mlflow.experimentKind`
tag alone does not choose it. Hence a fresh browser here, and the link each run prints."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
from PIL import Image

from tests.helpers import CHROMIUM_ARGS

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

SCREENSHOTS_ENV = "TRANSFERLAB_SCREENSHOTS"  # a folder (docs): the README's picture goes there
README_PICTURE = "mlflow-ui-study.png"
# read before the test moves into its temporary folder: relative to where pytest started
README_FOLDER = (
    Path(os.environ[SCREENSHOTS_ENV]).resolve() if SCREENSHOTS_ENV in os.environ else None
)
README_WIDTH = 1100
TRAIN_PER_CLASS = ("2", "4")
SEEDS = ("1", "2")
UI_WAIT_S = 180  # `mlflow ui` starts in ~10 s here; a loaded CI machine takes longer
PAGE_WAIT_MS = 60_000  # playwright's wait for anything the page shows
NAME_CELL = '[col-id="attributes.`Run Name`"]'
NO_ASSISTANT = """
localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
"""  # the MLflow Assistant panel opens on a first visit, over a third of the table
ROWS = ".ag-pinned-left-cols-container .ag-row"  # the name column's rows: one per shown run


@pytest.fixture
def mlflow_ui(tracking_uri, tmp_path) -> Iterator[str]:
    """`mlflow ui` over the session's store on a free loopback port; yields its address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "mlflow-ui.log"
    command = [Path(sys.executable).with_name("mlflow"), "ui", "--backend-store-uri"]
    command += [tracking_uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its workers stop with it
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job queues
        )
    try:
        deadline = time.monotonic() + UI_WAIT_S
        while not answers(f"{address}/health"):
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"mlflow ui not up in {UI_WAIT_S} s"
            time.sleep(0.2)
        yield address
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def sidebar(page: Page) -> set[str]:
    """The sidebar's links: Model training mode lists an experiment's Runs and Models;
    GenAI mode lists Traces, Judges, Prompts and Agent versions instead."""
    return {text.strip() for text in page.locator("nav a").all_inner_texts()}


def shown_rows(page: Page) -> list[str]:
    """The run ids of the table's rows, top to bottom."""
    rows = page.locator(ROWS)
    ids = [rows.nth(i).get_attribute("row-id") for i in range(rows.count())]
    indices = [int(rows.nth(i).get_attribute("row-index")) for i in range(rows.count())]
    return [run_id for _, run_id in sorted(zip(indices, ids, strict=True))]


def cell(page: Page, run_id: str, column: str) -> Locator:
    """A run's cell in a column of the table's scrolling part (Dataset, Source, Models)."""
    return page.locator(f'.ag-row[row-id="{run_id}"] [col-id="attributes.`{column}`"]')


def model_links(page: Page, run_id: str) -> set[str]:
    """The logged model ids that a run's Models cell links to (`#/.../models/<id>`)."""
    links = cell(page, run_id, "Models").locator("a")
    return {links.nth(i).get_attribute("href").rpartition("/")[2] for i in range(links.count())}


@pytest.mark.slow
def test_a_study_reads_at_a_glance_in_the_mlflow_ui(
    chromium, multirun, client, tracking_uri, mlflow_ui, tmp_path, monkeypatch
):
    from playwright.sync_api import sync_playwright

    from transferlab.tracking.mlflow_run import Tracker

    monkeypatch.chdir(tmp_path)  # the new experiment's artifacts: ./mlruns, here
    swept = [f"dataset.task.train_per_class={','.join(TRAIN_PER_CLASS)}", f"seed={','.join(SEEDS)}"]
    study = "ui_study"  # an experiment the run creates itself, as a user's first run does
    assert multirun(*swept, "compare_scratch=true", f"experiment_name={study}") == 0
    link = Tracker(tracking_uri, study).runs_page_url(mlflow_ui)  # the link each run prints
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("transferlab.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1800, "height": 900})
        page.add_init_script(NO_ASSISTANT)
        page.set_default_timeout(PAGE_WAIT_MS)
        page.goto(link)  # a fresh browser otherwise: no workflow chosen before
        page.locator(f'{ROWS}[row-id="{parent.info.run_id}"]').wait_for()
        page.screenshot(path=tmp_path / "top-level.png")
        links = sidebar(page)
        assert {"Runs", "Models", "Model registry"} <= links, links  # Model training mode
        assert not {"Judges", "Prompts", "Agent versions"} & links, links  # not GenAI's

        assert shown_rows(page) == [parent.info.run_id]  # the study is one row

        expand(page, parent.info.run_id)
        for child in children:
            page.locator(f'{ROWS}[row-id="{child.info.run_id}"]').wait_for()
        widen_names(page)
        page.screenshot(path=tmp_path / "expanded.png")
        page.screenshot(path=tmp_path / README_PICTURE, clip=table_clip(page))
        names = {}
        for child in children:
            name = page.locator(f'{ROWS}[row-id="{child.info.run_id}"] {NAME_CELL} a')
            names[child.info.run_id] = name.inner_text().strip()
            assert names[child.info.run_id] == child.info.run_name
            assert_names_swept_values(names[child.info.run_id], child.data.params)
            dataset = cell(page, child.info.run_id, "Dataset").inner_text()
            for logged in child.inputs.dataset_inputs:  # shown as `digits (digest)`
                assert f"{logged.dataset.name} ({logged.dataset.digest})" in dataset, dataset
            logged_models = client.search_logged_models(
                [experiment.experiment_id], filter_string=f"source_run_id = '{child.info.run_id}'"
            )
            assert logged_models, child.info.run_id
            assert model_links(page, child.info.run_id) == {m.model_id for m in logged_models}
        assert len(set(names.values())) == 4, names
        browser.close()
    if README_FOLDER is not None:
        save_readme_picture(tmp_path / README_PICTURE, README_FOLDER)


def expand(page: Page, run_id: str) -> None:
    """Clicks the +/- button before a parent run's name: its children show below it."""
    row = page.locator(f'{ROWS}[row-id="{run_id}"]')
    row.locator("button[data-component-id*=runnamecellrenderer]").click()


def widen_names(page: Page) -> None:
    """Drags the Run Name column's edge 150 px right, as a user would to read whole names."""
    edge = page.locator(f".ag-header-cell{NAME_CELL} .ag-header-cell-resize")
    box = edge.bounding_box()
    edge.hover()
    page.mouse.down()
    for dx in range(10, 160, 10):  # ag-grid resizes on moves, not on a jump
        page.mouse.move(box["x"] + box["width"] / 2 + dx, box["y"] + box["height"] / 2)
    page.mouse.up()


def table_clip(page: Page) -> dict[str, float]:
    """The page from its top left corner to the Models column and the last row shown."""
    models = page.locator('.ag-header-cell[col-id="attributes.`Models`"]').bounding_box()
    rows = [page.locator(ROWS).nth(i).bounding_box() for i in range(page.locator(ROWS).count())]
    bottom = max(row["y"] + row["height"] for row in rows)
    return {"x": 0, "y": 0, "width": models["x"] + models["width"] + 16, "height": bottom + 16}


def save_readme_picture(screenshot: Path, folder: Path) -> None:
    """The README's picture: 1100 px wide, 256 colours (~20 KB instead of ~80 KB)."""
    image = Image.open(screenshot).convert("RGB")
    image = image.resize((README_WIDTH, round(image.height * README_WIDTH / image.width)))
    image = image.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    image.save(folder / README_PICTURE, optimize=True)


def assert_names_swept_values(name: str, params: dict[str, str]) -> None:
    """`small_cnn-none-adamw tpc=2 seed=1`: the seed and train_per_class as `key=value`."""
    tokens = name.split()
    assert f"seed={params['seed']}" in tokens, name
    others = {t.partition("=")[2] for t in tokens if "=" in t and not t.startswith("seed=")}
    assert params["dataset.task.train_per_class"] in others, name
