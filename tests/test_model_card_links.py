"""Model cards link to this project's docs, never to the PyPI page of the unrelated `easyllm`."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from easyllm.records import model_card as cards

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the check below only reads pyproject.toml

OTHER_PROJECT = re.compile(r"pypi\.org/project/easyllm\b", re.IGNORECASE)


@pytest.mark.parametrize(
    ("adapter", "base"), [(True, "HuggingFaceTB/SmolLM2-135M-Instruct"), (False, None)]
)
def test_the_card_links_to_the_docs_and_not_to_the_other_projects_pypi_page(adapter, base):
    info = {
        "task": "sft",
        "method": "lora" if adapter else "full",
        "adapter": adapter,
        "base_model": base,
    }
    card = cards.model_card(
        info, {"lora_r": 16, "learning_rate": 5e-4}, {"eval_loss": 0.8}, repo_id="me/model"
    )
    assert not OTHER_PROJECT.search(card)
    assert f"[easyllm]({cards.DOCS_URL})" in card


def test_the_docs_link_is_the_one_pyproject_publishes():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["urls"]["Documentation"] == cards.DOCS_URL
    assert project["name"] != "easyllm"  # that PyPI name belongs to another project


def test_no_source_file_points_users_at_the_other_project():
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "easyllm").rglob("*.py")
        if OTHER_PROJECT.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
