"""The bodies of `ModelRunner.save()` and of the records a run writes before it trains."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainingArguments

from ..errors import ConfigError, UsageError
from ..eval.generation import as_conversation
from ..eval.parity import PARITY_FILE, check_merge_parity
from ..files import CARD_FILE, METRICS_FILE, write_json_atomic, write_text_atomic
from ..methods import has_adapter, load_adapter
from ..modeling import portable_model_name, public_model_name
from ..tasks.base import ModelLoading
from ..train.distributed import on_main_process
from ..train.engine import TrainResult, write_run_records
from ..train.run_folder import save_run
from ..train.settings import SETTINGS_FIELDS
from .drift import check_template, template_fingerprint
from .folder import SaveInfo, merged_weights, save_merged_folder, save_model_folder
from .hub import push_folder_to_hub
from .model_card import model_card
from .reproduce import cached_revision, write_reproduction_record

if TYPE_CHECKING:
    from ..runner import ModelRunner

MAX_NEW_TOKENS = 256  # what generate() answers with by default


def save_info(runner: ModelRunner) -> SaveInfo:
    """What easyllm.json records about `runner` (see SaveInfo)."""
    method = runner.settings.method_entry
    task_info = (
        runner._model_info() if runner.task.capabilities.model_from_data and runner.model else None
    )
    rendering = template_fingerprint(runner.tokenizer) if runner.template is not None else None
    return SaveInfo(
        task=runner.task_name,
        method=runner.settings.method,
        adapter=has_adapter(runner.model),
        base_model=None if method.saves_full_weights else portable_model_name(runner.model_name),
        trust_remote_code=runner.trust_remote_code,
        max_length=runner.data_options.max_length,
        task_info=task_info or None,
        template_fingerprint=rendering,
    )


def settings_table(runner: ModelRunner) -> dict[str, Any]:
    """The settings a model card lists: easyllm's and the TrainingArguments the user chose."""
    settings = {
        **{k: getattr(runner.settings, k) for k in SETTINGS_FIELDS},
        **runner.settings.trainer_args,
    }
    settings.pop("output_dir", None)
    return settings


def card_for(
    runner: ModelRunner, info: SaveInfo, result: TrainResult | None, repo_id: str | None
) -> str:
    """The model card of a save; `result`: a finished run, whose metrics and loss plot it shows."""
    shown = result or runner.last_result
    metrics = shown.metrics if shown else {}
    return model_card(info.to_json(), settings_table(runner), metrics, repo_id, result is not None)


def save(
    runner: ModelRunner,
    target: Path,
    *,
    result: TrainResult | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write `runner`'s model folder; `result`: a finished run (metrics, loss plot, rejects)."""
    info = save_info(runner)
    if repo_id is not None:  # a push: no path of this machine leaves it
        info.base_model = _public_base(info.base_model)
    card = card_for(runner, info, result, repo_id)
    rejects = runner.data.rejects if result is not None and runner.data is not None else ()
    records = (lambda folder: write_run_records(result, folder)) if result is not None else None
    saved = save_model_folder(
        target,
        runner.model,
        runner.tokenizer,
        info,
        card=card,
        run_records=records,
        rejects=rejects,
    )
    _name_base_publicly(saved, info.base_model)
    return saved


def _public_base(base: str | None) -> str | None:
    """The base model as another machine can know it: a hub id, or a local folder's name only."""
    if base is None:
        return None
    return Path(base).name if Path(base).is_absolute() else public_model_name(base)


def _name_base_publicly(folder: Path, base: str | None) -> None:
    """adapter_config.json names the base by its public id (peft loads the base from there)."""
    config = folder / "adapter_config.json"
    if base is None or not config.is_file():
        return
    adapter = json.loads(config.read_text())
    public = public_model_name(base)
    if adapter.get("base_model_name_or_path") != public and not Path(base).is_absolute():
        adapter["base_model_name_or_path"] = public
        write_json_atomic(config, adapter)


def finish_run(runner: ModelRunner, folder: Path, result: TrainResult) -> None:
    """Save the trained model first, so that nothing after it can lose it; then evaluate.

    Held-out metrics (evaluation can run out of memory, be interrupted, or fill the disk) are
    added to the saved metrics.json and model card afterwards, each file replaced whole.
    """
    save_run(lambda: save(runner, folder, result=result), folder)
    if runner.data is None or runner.data.validation is None:
        return
    result.metrics.update(runner.evaluate())
    on_main_process(_add_held_out_metrics, runner, folder, result)


def _add_held_out_metrics(runner: ModelRunner, folder: Path, result: TrainResult) -> None:
    """metrics.json and the card again, now with the held-out metrics (the rest is as saved)."""
    write_json_atomic(folder / METRICS_FILE, result.metrics)
    write_text_atomic(folder / CARD_FILE, card_for(runner, SaveInfo.read(folder), result, None))


def record_run(
    runner: ModelRunner, folder: Path, manifest: dict[str, Any], args: TrainingArguments
) -> Path:
    """reproduce.json, written before training so a run that crashes is recorded too."""
    return write_reproduction_record(
        folder,
        model_name=portable_model_name(runner.model_name),
        model_source=runner._source,
        task=runner.task_name,
        settings=runner.settings,
        seed=runner.seed,
        data=runner.data,
        tokenizer=runner.tokenizer,
        template=runner.template,
        manifest=manifest,
        data_path=runner._data_path,
        data_options=runner.data_options,
        training_arguments=args,
        trust_remote_code=runner.trust_remote_code,
        revision=cached_revision(runner._source),
    )


def load(
    cls: type[ModelRunner], folder: Path, *, template: str | None, strict: bool, trust: bool
) -> ModelRunner:
    """`ModelRunner.load`: the runner that saved `folder`, its adapter, template and max_length.

    Remote code is the caller's choice (`trust`), never the folder's: a downloaded run that was
    trained with remote code is refused until the caller says so.
    """
    info = SaveInfo.read(folder)
    if info.trust_remote_code and not trust:
        raise ConfigError(
            f"{folder} was trained with trust_remote_code=True: loading it runs Python code that "
            "comes with its model. If you trust that code, pass "
            "ModelRunner.load(..., trust_remote_code=True)."
        )
    runner = cls.__new__(cls)
    runner._setup(
        info.base_model if info.base_model is not None else str(folder),
        task=info.task,
        method=info.method,
        template=template,
        trust_remote_code=trust,
        seed=42,
        tokenizer_source=str(folder),
        max_length=info.max_length,
    )
    if runner.template is not None:
        check_template(
            info.template_fingerprint, runner.tokenizer, strict=strict, source=str(folder)
        )
    # built from the data (classify: labels)
    if runner.model is None and info.task_info is not None:
        runner.model = runner._load_model(info.task_info)
    if info.adapter:
        runner.model = load_adapter(runner.model, str(folder))
    runner.run_dir = folder
    return runner


def merge(runner: ModelRunner, target: Path, *, check: bool, prompts: list[str] | None) -> Path:
    """`ModelRunner.merge`: the adapter merged into a fresh full-precision base, parity-checked."""
    if not has_adapter(runner.model):
        raise UsageError(
            "Nothing to merge: this model has no adapter (train with method='lora' or 'qlora')."
        )
    loading = ModelLoading(
        runner._source, runner.settings.method_entry.full_precision(), runner.trust_remote_code
    )
    merged = merged_weights(
        runner.model, lambda: runner.task.load_model(loading, runner._model_info() or {})
    )
    parity = None
    if check and runner.task.capabilities.generative and runner.encoder is not None:
        prompt_ids = (
            [runner.encoder.encode_prompt(as_conversation(p)) for p in prompts] if prompts else None
        )
        parity = check_merge_parity(runner.model, merged, runner.encoder, runner.data, prompt_ids)
    _stop_where_trained(merged, runner)
    return save_merged_folder(target, merged, runner.tokenizer, parity.write if parity else None)


def _stop_where_trained(model: Any, runner: ModelRunner) -> None:
    """The merged folder's generation_config stops at the end-of-turn ids training taught.

    Plain transformers, vLLM or llama.cpp then end a reply where easyllm does, and a plain
    generate() is not cut at transformers' 20-token default.
    """
    config = getattr(model, "generation_config", None)
    if runner.encoder is None or config is None:
        return
    eos = config.eos_token_id
    known = eos if isinstance(eos, list) else [] if eos is None else [eos]
    ends = [token for token in runner.encoder.end_of_turn_ids if token is not None]
    config.eos_token_id = list(dict.fromkeys([*ends, *known]))
    config.pad_token_id = runner.tokenizer.pad_token_id
    if config.max_new_tokens is None:
        config.max_new_tokens = MAX_NEW_TOKENS


def push(
    runner: ModelRunner, repo_id: str, *, private: bool, token: str | None, merge: bool
) -> str:
    """`ModelRunner.push_to_hub`: what save() writes (or merged weights, same card), uploaded."""
    with tempfile.TemporaryDirectory() as folder:
        save(runner, Path(folder), repo_id=repo_id)
        if merge:
            card = (Path(folder) / CARD_FILE).read_text()
            shutil.rmtree(folder)
            runner.merge(folder)
            # parity.json holds the model's replies to held-out prompts: it stays on this machine
            (Path(folder) / PARITY_FILE).unlink(missing_ok=True)
            (Path(folder) / CARD_FILE).write_text(
                card.replace("library_name: peft", "library_name: transformers")
            )
        return push_folder_to_hub(Path(folder), repo_id, private=private, token=token)
