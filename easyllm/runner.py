"""ModelRunner: the facade. It holds state and call order and delegates all the work."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, overload

from datasets import Dataset
from peft import PeftModel
from transformers import AutoConfig, set_seed

from . import __version__
from . import checkpoints as ckpt
from .adapters import (
    copy_dequantized_weights,
    count_parameters,
    is_4bit,
    keep_4bit_weights_trainable,
    make_trainable,
)
from .config import SETTINGS_FIELDS, Method, TrainSettings, build_settings
from .data.control_tokens import ControlTokenPolicy
from .data.encoding import ChatEncoder, TrainOn
from .data.formats import Message, OnBadRows
from .data.loading import DataSource, read_source, write_rejects
from .data.preview import Preview, spans
from .data.templates import ResolvedTemplate, resolve_template
from .drift import check_template, template_fingerprint
from .errors import UsageError
from .evaluation import EVALUATION_FILE, Answerer, EvalResult, Reference, compare_replies
from .generation import Reply, generate_batch, stream_reply
from .hub import SAVE_INFO_FILE, push_folder_to_hub, read_save_info, write_model_folder
from .model_card import model_card, write_model_card
from .modeling import DEFAULT_MODEL, ensure_pad_token, load_tokenizer, resolve_model
from .notebook import LiveLossPlot, html_table, in_notebook
from .parity import ParityReport, merge_parity, parity_prompts
from .reproduce import write_reproduction_record
from .tasks import TASKS, DataOptions, DataReport, PreparedData
from .training import TrainResult, run_trainer, write_run_records

RUNS_DIR = "easyllm-runs"


class ModelRunner:
    """Load a model, learn from your data, and talk to it.

    >>> runner = ModelRunner()                          # built-in SmolLM2-135M-Instruct, offline
    >>> runner.load_data("examples/data/identity.jsonl")
    >>> runner.train()
    >>> runner.generate("Who are you?")

    `model` is None (the built-in default), a built-in alias, a local folder or a hub id.
    `method` is "lora" (default), "qlora" (4-bit base) or "full"; `template` overrides the
    tokenizer's chat template with a Jinja string. Remote code runs only with
    `trust_remote_code=True`.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        task: str = "sft",
        method: Method = "lora",
        template: str | None = None,
        trust_remote_code: bool = False,
        seed: int = 42,
        _tokenizer_source: str | None = None,
    ) -> None:
        self.model_name = str(model) if model is not None else DEFAULT_MODEL
        self.task_name = task
        self.task = TASKS.get(task)
        self.settings = TrainSettings(method=method)
        self.seed = seed
        self.trust_remote_code = trust_remote_code
        self._source = resolve_model(model)
        self.tokenizer = load_tokenizer(_tokenizer_source or self._source, trust_remote_code=trust_remote_code)
        self.template: ResolvedTemplate | None = None
        self.encoder: ChatEncoder | None = None
        if self.task.uses_chat_template or self.task.generative:  # generate() renders prompts with it
            model_type = getattr(AutoConfig.from_pretrained(self._source, trust_remote_code=trust_remote_code),
                                 "model_type", None)
            self.template = resolve_template(self.tokenizer, template=template, model_type=model_type)
            self.tokenizer.chat_template = self.template.source  # saved with the tokenizer: reloads chat the same
            self.encoder = ChatEncoder(self.tokenizer)
        self.data: PreparedData | None = None
        self._data_path: str | None = None  # what load_data() read, for reproduce.json
        self._data_options: DataOptions | None = None
        self.last_result: TrainResult | None = None
        self.run_dir: Path | None = None  # the run folder (after train() or load()): evaluate() writes there
        self.model = self._load_model(method)

    # -- the three lines ---------------------------------------------------------------------
    def load_data(
        self,
        source: DataSource,
        *,
        val_size: float | int = 0.1,
        seed: int | None = None,
        max_length: int = 1024,
        input_key: str | None = None,
        output_key: str | None = None,
        columns: dict[str, str] | None = None,
        on_bad_rows: OnBadRows = "raise",
        train_on: TrainOn = "assistant",
        on_control_tokens: ControlTokenPolicy = "text",
    ) -> DataReport:
        """Read, validate, template and mask `source`, holding out `val_size` for evaluation.

        `source`: a .jsonl, .json, .csv, .parquet or .txt file, a folder of them, a list of dicts,
        or a datasets.Dataset / DatasetDict. Rows may be alpaca, sharegpt, {"messages": [...]},
        prompt/completion, question/answer or input/output; other column names via
        `columns={"prompt": "q", "completion": "a"}` (or `input_key=` / `output_key=`). Bad rows
        raise one DataError naming each file:line; `on_bad_rows="skip"` trains on the rest and
        writes the skipped rows to rejects.jsonl in the run folder. `train_on`: "assistant" (every reply), "last_assistant" or "all".
        `on_control_tokens`: strings like "<|im_end|>" inside messages are kept as plain "text"
        (default), make the row a "reject" error, or "allow"ed to act as control tokens.
        """
        options = DataOptions(
            val_size=val_size, seed=self.seed if seed is None else seed, max_length=max_length,
            input_key=input_key, output_key=output_key, columns=columns, on_bad_rows=on_bad_rows,
            train_on=train_on, on_control_tokens=on_control_tokens,
        )
        with ckpt.main_process_first():  # several processes: prepare once, the others reuse the cache
            self.data = self.task.prepare(read_source(source), self.encoder, options)
        self._data_path = str(source) if isinstance(source, (str, os.PathLike)) else None
        self._data_options = options
        if self.template is not None and self.task.uses_chat_template:
            self.data.report.template = f"{self.template.name} ({self.template.reason})"
        if ckpt.is_main_process():
            print(self.data.report)
        return self.data.report

    def preview(self, n: int = 3, *, split: str = "train") -> Preview:
        """The first `n` examples as the model sees them, trained tokens highlighted.

        Prints in colour in a terminal and renders as HTML in Jupyter; `str()` marks
        trained text as [[...]].
        """
        if self.data is None:
            raise UsageError("Nothing to preview: call runner.load_data(...) first.")
        if not {"input_ids", "prompt_ids"} & set(self.data.train.column_names):
            raise UsageError(f"preview() shows tokenized examples; task '{self.task_name}' tokenizes at training time.")
        dataset = self.data.train if split == "train" else self.data.validation
        if dataset is None:
            raise UsageError("There is no validation split: load_data(..., val_size=0.1) holds one out.")
        rows = [dataset[i] for i in range(min(n, len(dataset)))]
        return Preview([spans(self.tokenizer, *_preview_ids(row)) for row in rows])

    def train(self, *, resume: ckpt.Resume = False, overwrite: bool = False, **overrides: Any) -> TrainResult:
        """Fine-tune on the loaded data and save the run; any TrainingArguments field can be overridden.

        Checkpoints are written about 4 times per epoch, each complete or absent. `resume=True`
        continues from the newest checkpoint in `output_dir` (without it: this model's newest
        unfinished run under easyllm-runs/) and refuses if the data, tokenizer, template or settings
        changed; `resume="force"` continues anyway. A folder that holds a run is only replaced with
        `overwrite=True`. Ctrl-C stops after writing a checkpoint. See docs/reliability.md.

        >>> runner.train(method="qlora", num_train_epochs=5, learning_rate=1e-4)
        >>> runner.train(output_dir="runs/a", resume=True)  # after a crash, a kill or Ctrl-C
        """

        if self.data is None:
            raise UsageError("No training data yet: call runner.load_data('file.jsonl') before train().")
        settings = build_settings(self.settings, overrides)
        run, manifest = ckpt.start_run(settings, self.model_name, RUNS_DIR, self.data, self.tokenizer,
                                       self.template and self.template.source, self.seed, resume, overwrite)
        self._switch_method(settings.method)
        self.settings = settings
        set_seed(self.seed)  # LoRA weights are initialised before the Trainer seeds anything
        if self.model is None:  # a task whose model depends on the data (e.g. its labels)
            self.model = self._load_model(settings.method)
        self.model = make_trainable(self.model, settings, task_type=self.task.peft_task_type)
        trainable, total = count_parameters(self.model)
        args = ckpt.run_arguments(
            settings, str(run.path), self.seed, self.data.validation is not None,
            model_config=self.model.config, max_length=_longest_example(self.data),
        )
        ckpt.on_main_process(ckpt.check_free_space, run.path, self.model, args)
        ckpt.on_main_process(  # before training: a run that crashes is recorded too
            write_reproduction_record, run.path, model_name=_portable(self.model_name), model_source=self._source,
            task=self.task_name, settings=settings, seed=self.seed, data=self.data, tokenizer=self.tokenizer,
            template=self.template, manifest=manifest, data_path=self._data_path, data_options=self._data_options,
            training_arguments=args, trust_remote_code=self.trust_remote_code,
            revision=getattr(self.model.config, "_commit_hash", None),
        )
        if ckpt.is_main_process():
            start = f"; resuming from {run.resume_from.name}" if run.resume_from else ""
            print(f"easyllm: {settings.method} training {trainable:,} of {total:,} parameters; "
                  f"the run is saved in {run.path}{start}")
        trainer = ckpt.make_resumable(self.task.build_trainer(self.model, self.tokenizer, self.data, args, settings),
                                      manifest, run.resume_from)
        if in_notebook():
            trainer.add_callback(LiveLossPlot())
        result = run_trainer(trainer, self.data, resume_from=run.resume_from, compile=settings.compile)
        result.metrics["trainable_parameters"] = trainable
        self.run_dir = run.path
        if self.data.validation is not None:
            result.metrics.update(self.evaluate())
        ckpt.save_run(lambda: self.save(run.path, _result=result), run.path)
        self.last_result = result
        return result

    def evaluate(
        self, data: DataSource | None = None, *, batch_size: int = 8, max_samples: int | None = 32,
        max_new_tokens: int | None = None, generate: bool = True, compare: bool | ModelRunner = False,
    ) -> EvalResult:
        """Held-out metrics on the validation split or `data`; with a run folder, also written to evaluation.json.

        Every task gives its own metrics (SFT: eval_loss and perplexity). Chat tasks (sft) also
        answer the first `max_samples` held-out prompts (None: all), greedily with the training
        template, and score the replies against the reference replies: exact_match, token_f1,
        rouge_l, bleu, runaway_rate (share cut off at `max_new_tokens` without ending their turn;
        None: 256, or twice the longest reference plus 16) and mean lengths. `generate=False` skips that.
        `compare=True` answers the same prompts with the adapter turned off (the base model, no
        second copy) and adds its metrics as base_*; `compare=<another ModelRunner>` adds that
        model's as compare_*. See docs/evaluation.md.

        >>> result = runner.evaluate(compare=True)
        >>> result["rouge_l"], result["base_rouge_l"], result.samples[0].reply
        """
        dataset, described = self._eval_dataset(data)
        model = self._require_model()
        other = self._comparison(compare, generate)
        prefix = "" if other is None else "base_" if compare is True else "compare_"
        result = EvalResult(self.task.evaluate(model, self.tokenizer, dataset, batch_size), data=described,
                            compared_with=other.label if other else None, prefix=prefix)
        if compare is True:  # the same weights and tokens with the adapter off: its loss means the same
            with other.context():
                result.update(_prefixed(prefix, self.task.evaluate(model, self.tokenizer, dataset, batch_size)))
        references = self._references(dataset, max_samples) if generate else []
        if references:
            metrics, result.samples = compare_replies(
                Answerer("model", model, self.encoder), other, references, prefix=prefix,
                max_new_tokens=max_new_tokens, batch_size=batch_size,
            )
            result.update(metrics)
        if self.run_dir is not None and ckpt.is_main_process():
            result.save(self.run_dir / EVALUATION_FILE)
        return result

    @overload
    def generate(self, prompt: str | list[Message], *, max_new_tokens: int = ..., system: str | None = ...,
                 stop: list[str] | None = ..., batch_size: int = ..., return_details: Literal[False] = ...,
                 **sampling: Any) -> str: ...

    @overload
    def generate(self, prompt: list[str], *, max_new_tokens: int = ..., system: str | None = ...,
                 stop: list[str] | None = ..., batch_size: int = ..., return_details: Literal[False] = ...,
                 **sampling: Any) -> list[str]: ...

    @overload
    def generate(self, prompt: str | list[Message], *, max_new_tokens: int = ..., system: str | None = ...,
                 stop: list[str] | None = ..., batch_size: int = ..., return_details: Literal[True],
                 **sampling: Any) -> Reply: ...

    @overload
    def generate(self, prompt: list[str], *, max_new_tokens: int = ..., system: str | None = ...,
                 stop: list[str] | None = ..., batch_size: int = ..., return_details: Literal[True],
                 **sampling: Any) -> list[Reply]: ...

    def generate(self, prompt, *, max_new_tokens: int = 256, system: str | None = None,
                 stop: list[str] | None = None, batch_size: int = 16, return_details: bool = False, **sampling):
        """Answer a prompt (str -> str), a batch (list[str] -> list[str]) or a message list (-> str).

        Greedy by default; pass temperature, top_p, top_k or repetition_penalty to change that,
        `stop=["..."]` to end early. The prompt is rendered with the same template and
        tokenization as training, and generation stops at the end-of-turn token. Batches are
        generated `batch_size` prompts at a time. `return_details=True` gives Reply objects
        (text, finish_reason "stop" or "length" when cut off at max_new_tokens, generated_tokens).
        """
        encoder = self._require_generative()
        single = isinstance(prompt, str) or (bool(prompt) and isinstance(prompt[0], dict))
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            return []
        conversations = [_as_conversation(p, system) for p in prompts]
        replies = generate_batch(self.model, encoder, conversations, max_new_tokens, stop,
                                 batch_size=batch_size, **sampling)
        if not return_details:
            replies = [reply.text for reply in replies]
        return replies[0] if single else replies

    def stream(self, prompt: str | list[Message], *, max_new_tokens: int = 256, system: str | None = None,
               stop: list[str] | None = None, **sampling: Any) -> Iterator[str]:
        """Like generate() for one prompt, but yields the text as it is produced.

        >>> for piece in runner.stream("Tell me a story"): print(piece, end="", flush=True)
        """
        encoder = self._require_generative()
        return stream_reply(self.model, encoder, _as_conversation(prompt, system), max_new_tokens, stop, **sampling)

    @overload
    def predict(self, texts: list[str] | list[tuple[str, str]], *, return_scores: Literal[False] = ...,
                batch_size: int = ...) -> list[str | int]: ...

    @overload
    def predict(self, texts: list[str] | list[tuple[str, str]], *, return_scores: Literal[True],
                batch_size: int = ...) -> list[tuple[str | int, dict[str | int, float]]]: ...

    def predict(self, texts, *, return_scores=False, batch_size=16):
        """The label of each text (or (text, text_pair) tuple); with return_scores, each label's probability too.

        >>> runner.predict(["where is my parcel?"])
        ['track_order']
        """
        predict = getattr(self.task, "predict", None)
        if predict is None:
            raise UsageError(f"predict() needs a classification task; task '{self.task_name}' is not one "
                             "(use generate()).")
        return predict(self._require_model(), self.tokenizer, texts, batch_size=batch_size,
                       return_scores=return_scores)

    def score(self, texts: list[str | list[Message]], *, batch_size: int = 8) -> list[float]:
        """Rewards of a reward model (task="rm"), one per reply (str) or conversation; higher is preferred.

        >>> runner.score([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]])
        """
        scorer = getattr(self.task, "score", None)
        if scorer is None:
            raise UsageError(f"score() needs a reward model (task='rm'); task '{self.task_name}' gives no scores.")
        return scorer(self._require_model(), self.tokenizer, self.encoder, texts, batch_size=batch_size)

    # -- saving ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, _result: TrainResult | None = None, _repo_id: str | None = None) -> Path:
        """Write the adapter (or full weights), tokenizer, settings and a model card (README.md).

        Reload with ModelRunner.load(path). Nothing secret is written: tokens never reach a file.
        """
        target = Path(path)
        target.mkdir(parents=True, exist_ok=True)
        full_weights = self.settings.method == "full"  # the weights themselves are what changed
        info = {
            "easyllm_version": __version__,
            "base_model": None if full_weights else _portable(self.model_name),
            "task": self.task_name,
            "method": self.settings.method,
            "adapter": isinstance(self.model, PeftModel),
            "trust_remote_code": self.trust_remote_code,
        }
        saved_info = getattr(self.task, "saved_info", None)  # what a data-built model needs to be rebuilt
        if saved_info is not None and self.model is not None:
            info["task_info"] = saved_info(self.model)
        if self.template is not None:  # load() checks that chats still render as in training
            info["template_fingerprint"] = template_fingerprint(self.tokenizer)
        staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=target))
        try:
            write_model_folder(staging, self.model, self.tokenizer, info)
            result = _result or self.last_result
            settings = {**{k: getattr(self.settings, k) for k in SETTINGS_FIELDS}, **self.settings.trainer_args}
            settings.pop("output_dir", None)
            if _result is not None:
                write_run_records(_result, staging)
                if self.data is not None and self.data.rejects:
                    write_rejects(self.data.rejects, staging / "rejects.jsonl")
            card = model_card(info, settings, result.metrics if result else {}, _repo_id,
                              has_loss_plot=(staging / "loss.png").exists())
            write_model_card(staging, card)
            _move_into(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, *, template: str | None = None, strict: bool = False) -> ModelRunner:
        """Reload a folder written by save() or train(): same model, adapter, tokenizer and template.

        Chats must render as in training: if they do not (another `template=`, or a library
        version that tokenizes the saved tokenizer differently), a TemplateDriftWarning shows the
        difference; `strict=True` raises ConfigError instead.
        """
        folder = Path(path)
        info = read_save_info(folder)
        base = info["base_model"] if info["base_model"] is not None else str(folder)
        runner = cls(
            base, task=info["task"], method=info["method"], template=template,
            trust_remote_code=info.get("trust_remote_code", False), _tokenizer_source=str(folder),
        )
        if runner.template is not None:
            check_template(info.get("template_fingerprint"), runner.tokenizer, strict=strict, source=str(folder))
        if runner.model is None and info.get("task_info") is not None:  # built from the data (classify: labels)
            runner.model = runner._load_model(info["method"], task_info=info["task_info"])
        if info.get("adapter"):
            runner.model = PeftModel.from_pretrained(runner.model, str(folder), is_trainable=True)
        runner.run_dir = folder
        return runner

    def merge(self, path: str | os.PathLike, *, check: bool = True, prompts: list[str] | None = None) -> Path:
        """Write the LoRA adapter merged into full-precision base weights: a plain transformers folder.

        A QLoRA adapter is merged into the de-quantized 4-bit weights it was trained on (in a
        freshly loaded full-precision model), so the merged model answers like the adapter. `check`: generative models answer a few held-out prompts (`prompts`, else the validation
        split, else fixed probes) with the adapter and merged; agreement and log-prob drift are
        printed and written to parity.json (see docs/reliability.md).
        """
        if not isinstance(self.model, PeftModel):
            raise UsageError("Nothing to merge: this model has no adapter (train with method='lora' or 'qlora').")
        target = Path(path)
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as adapter_dir:
            self.model.save_pretrained(adapter_dir)
            saved_info = getattr(self.task, "saved_info", None)
            if saved_info is not None:  # a head built from the data (classify): rebuilt from what the model knows
                base = self.task.load_saved(self._source, saved_info(self.model), quantize_4bit=False,
                                            trust_remote_code=self.trust_remote_code)
            else:
                base = self.task.load_model(self._source, quantize_4bit=False,
                                            trust_remote_code=self.trust_remote_code, data=self.data)
            if is_4bit(self.model.get_base_model()):
                copy_dequantized_weights(self.model.get_base_model(), base)
            merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        staging = Path(tempfile.mkdtemp(prefix=".merging-", dir=target))
        try:
            if check and self.task.generative and self.encoder is not None:
                self._check_parity(merged, prompts).write(staging)
            merged.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            _move_into(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    merge: bool = False) -> str:
        """Upload what save() writes (or, with merge=True, merged full weights) to the Hugging Face Hub.

        Returns the repository URL. The model card goes along either way; the token is only
        handed to huggingface_hub, never written or printed.
        """
        with tempfile.TemporaryDirectory() as folder:
            self.save(folder, _repo_id=repo_id)
            if merge:
                card = (Path(folder) / "README.md").read_text()
                shutil.rmtree(folder)
                self.merge(folder)
                (Path(folder) / "README.md").write_text(card.replace("library_name: peft", "library_name: transformers"))
            return push_folder_to_hub(Path(folder), repo_id, private=private, token=token)

    # -- internals ---------------------------------------------------------------------------
    def _check_parity(self, merged, prompts: list[str] | None) -> ParityReport:
        if prompts:
            ids = [self.encoder.encode_prompt(_as_conversation(prompt, None)) for prompt in prompts]
        else:
            ids = parity_prompts(self.encoder, self.data.validation if self.data is not None else None)
        report = merge_parity(self.model, merged, self.encoder, ids)
        print(f"easyllm: {report}")
        return report

    def _load_model(self, method: str, task_info: dict[str, Any] | None = None):
        options = {"quantize_4bit": method == "qlora", "trust_remote_code": self.trust_remote_code}
        if task_info is not None:
            model = self.task.load_saved(self._source, task_info, **options)
        else:
            model = self.task.load_model(self._source, data=self.data, **options)
        end_of_turn = self.encoder.end_of_turn_ids if self.encoder else [self.tokenizer.eos_token_id]
        ensure_pad_token(self.tokenizer, model, [t for t in end_of_turn if t is not None])
        if model is not None:
            keep_4bit_weights_trainable(model)  # before any generate() can repack them
        return model

    def _eval_dataset(self, data: DataSource | None) -> tuple[Dataset, str]:
        """The encoded rows to evaluate on, and where they came from."""
        if data is not None:
            options = DataOptions(val_size=0, seed=self.seed, keep_references=True)
            prepared = self.task.prepare(read_source(data), self.encoder, options)
            return prepared.train, prepared.report.source
        if self.data is not None and self.data.validation is not None:
            return self.data.validation, f"the validation split of {self.data.report.source}"
        raise UsageError(
            "Nothing to evaluate: call load_data(..., val_size=0.1) first to hold out rows, "
            "or pass data=... to evaluate()."
        )

    def _references(self, dataset: Dataset, max_samples: int | None) -> list[Reference]:
        references = getattr(self.task, "references", None)
        if references is None:
            return []
        if max_samples is not None and max_samples < 1:
            raise UsageError(f"max_samples={max_samples}: pass a count of at least 1, None for all rows, "
                             "or generate=False to skip generated replies.")
        return references(dataset, len(dataset) if max_samples is None else max_samples)

    def _comparison(self, compare: bool | ModelRunner, generate: bool) -> Answerer | None:
        """Who answers beside this model: its base (adapter off), another runner, or nobody."""
        if compare is False:
            return None
        if compare is True:
            if not isinstance(self.model, PeftModel):
                raise UsageError(
                    "compare=True compares the fine-tuned model with its base by turning the adapter off, but "
                    f"this model has no adapter (method='{self.settings.method}', or not trained yet). Pass "
                    "compare=ModelRunner(<base model>) to compare with another model."
                )
            return Answerer("base (adapter off)", self.model, self.encoder, self.model.disable_adapter)
        if not isinstance(compare, ModelRunner):
            raise UsageError(f"compare={compare!r}: pass True (the base model, adapter off) or another ModelRunner.")
        if not generate or getattr(self.task, "references", None) is None:
            reason = "generate=False" if generate is False else f"task '{self.task_name}' has no reference replies"
            raise UsageError(f"compare=<ModelRunner> compares generated replies, but {reason}: "
                             "use a chat task (sft) with generate=True.")
        return Answerer(compare.model_name, compare._require_model(), compare._require_generative())

    def _require_generative(self) -> ChatEncoder:
        if not self.task.generative or self.encoder is None:
            raise UsageError(f"generate() needs a generative task; task '{self.task_name}' is not one.")
        self._require_model()
        return self.encoder

    def _require_model(self):
        if self.model is None:
            raise UsageError(f"Task '{self.task_name}' builds its model from the data: call load_data() and train().")
        return self.model

    def _switch_method(self, method: str) -> None:
        """QLoRA needs a 4-bit base, the others a full-precision one: reload if needed."""
        if self.model is None or (method == "qlora") == is_4bit(self.model):
            return
        if isinstance(self.model, PeftModel) or self.last_result is not None:
            raise UsageError(
                f"This model was already trained with method='{self.settings.method}'. To train with "
                f"method='{method}', start a new ModelRunner."
            )
        self.model = self._load_model(method)

    def _repr_html_(self) -> str:
        trainable, total = count_parameters(self.model) if self.model is not None else (0, 0)
        rows: dict[str, Any] = {
            "model": self.model_name, "task": self.task_name, "method": self.settings.method,
            "parameters": f"{total:,}", "trainable": f"{trainable:,}",
        }
        if self.template is not None:
            rows["template"] = f"{self.template.name} ({self.template.reason})"
        if self.data is not None:
            rows["train examples"] = self.data.report.train_examples
            rows["validation examples"] = self.data.report.val_examples
        if self.last_result is not None:
            rows.update(self.last_result.metrics)
        return html_table(rows, "ModelRunner")

    def __repr__(self) -> str:
        trainable, total = count_parameters(self.model) if self.model is not None else (0, 0)
        data = f", train={self.data.report.train_examples}" if self.data else ""
        return (f"ModelRunner(model={self.model_name!r}, task={self.task_name!r}, "
                f"method={self.settings.method!r}, parameters={total:,}, trainable={trainable:,}{data})")


def _longest_example(data: PreparedData) -> int:
    """Tokens in the longest training example (bounds a step's activations), at most max_length."""
    if "input_ids" not in data.train.column_names:  # pairs, classification: assume the bound
        return data.max_length
    return min(data.max_length, max(len(ids) for ids in data.train["input_ids"]))


def _preview_ids(row: dict) -> tuple[list[int], list[int]]:
    """input_ids and labels; a preference row shows its prompt and first reply (chosen / completion)."""
    if "input_ids" in row:
        return row["input_ids"], row["labels"]
    reply = row.get("chosen_ids", row.get("completion_ids", []))
    return row["prompt_ids"] + reply, [-100] * len(row["prompt_ids"]) + reply


def _as_conversation(prompt: str | list[Message], system: str | None) -> list[Message]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {prefix + name: value for name, value in metrics.items()}


def _portable(model_name: str) -> str:
    """Local folders are stored as absolute paths so a save can be reloaded from anywhere."""
    path = Path(model_name).expanduser()
    return str(path.resolve()) if path.is_dir() else model_name


def _move_into(staging: Path, target: Path) -> None:
    """Move finished files into `target`, the settings file last: its presence marks a complete save."""
    entries = sorted(staging.iterdir(), key=lambda entry: entry.name == SAVE_INFO_FILE)
    for entry in entries:
        destination = target / entry.name
        if destination.is_dir() and entry.is_dir():
            shutil.rmtree(destination)
        os.replace(entry, destination)
