"""The quickstart notebook runs headless and shows what a notebook user should see."""

from __future__ import annotations

import shutil

import pytest
from conftest import REPO

from easyllm.notebook import Metrics, html_table


def test_html_tables_escape_and_format():
    table = html_table({"loss": 0.123456, "name": "<b>"}, "metrics")
    assert "0.1235" in table and "&lt;b&gt;" in table and "<caption" in table
    assert "<table>" in Metrics({"eval_loss": 1.0})._repr_html_()


def test_report_and_runner_render_as_html(tiny_model_dir, chats):
    from easyllm import ModelRunner

    runner = ModelRunner(str(tiny_model_dir))
    report = runner.load_data(chats, val_size=2)
    assert "train" in report._repr_html_() and "Read 12 rows" in report._repr_html_()
    assert "trainable" in runner._repr_html_() and "template" in runner._repr_html_()


@pytest.mark.slow
def test_quickstart_notebook_executes_and_learns(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    shutil.copytree(REPO / "examples" / "data", tmp_path / "data")
    notebook = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    texts = {
        i: "".join(o.get("text", "") for o in cell.get("outputs", []))
        for i, cell in enumerate(notebook.cells)
    }
    html = {
        i: "".join(o.get("data", {}).get("text/html", "") for o in cell.get("outputs", []))
        for i, cell in enumerate(notebook.cells)
    }
    images = sum(
        1
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if "image/png" in o.get("data", {})
    )
    assert "Lumen" not in texts[1] and "Lumen" in texts[4]
    assert "<mark" in html[2]  # preview with trained spans
    assert "TrainResult" in html[3] and images >= 1  # live loss curve
    assert "eval_loss" in html[5] and "ModelRunner" in html[6]
