"""easyllm.compat: every private library hook easyllm relies on is there, as easyllm uses it."""

from __future__ import annotations

import dataclasses

import pytest
import transformers

from easyllm import compat


def test_every_hook_is_still_there() -> None:
    skipped: list[str] = []
    problems = compat.check_hooks(skipped)
    print("\n".join(skipped))  # optional libraries that are not installed (pytest -s shows them)
    assert not problems, "\n".join(problems)


def test_a_removed_method_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(transformers.Trainer, "_load_rng_state")
    problems = compat.check_hooks()
    assert any(
        "transformers.Trainer._load_rng_state" in p
        and p.startswith("transformers ")
        and "EpochRng" in p
        for p in problems
    ), problems


def test_a_changed_signature_a_missing_name_and_changed_code_are_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    by_name = {hook.name: hook for hook in compat.HOOKS}
    save = by_name["transformers.Trainer._save_checkpoint"]
    broken = (
        dataclasses.replace(save, params=("model", "trial", "no_such_parameter")),
        dataclasses.replace(save, name="transformers.Trainer._no_such_hook", mentions=()),
        dataclasses.replace(save, mentions=("self._no_such_call(",)),
        dataclasses.replace(
            by_name["torch.ops.aten._scaled_dot_product_flash_attention_for_cpu"],
            params=("query", "no_such_argument"),
        ),
        dataclasses.replace(
            by_name["torch._dynamo.config.suppress_errors"],
            name="torch._dynamo.config.no_such_option",
        ),
    )
    monkeypatch.setattr(compat, "HOOKS", broken)
    problems = compat.check_hooks()
    assert len(problems) == len(broken), problems
    assert "no parameter 'no_such_parameter'" in problems[0]
    assert "no longer has transformers.Trainer._no_such_hook" in problems[1]
    assert "no longer contains 'self._no_such_call('" in problems[2]
    assert "no parameter 'no_such_argument'" in problems[3] and problems[3].startswith("torch ")
    assert "no longer has torch._dynamo.config.no_such_option" in problems[4]


def test_an_optional_library_that_is_not_installed_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = compat.Hook("not_a_real_library", "not_a_real_library.thing", "nothing", "test", "0")
    monkeypatch.setattr(compat, "OPTIONAL", frozenset({"not_a_real_library"}))
    monkeypatch.setattr(compat, "HOOKS", (missing,))
    skipped: list[str] = []
    assert compat.check_hooks(skipped) == []
    assert skipped == ["not_a_real_library not installed, skipped (1 hooks)"]
