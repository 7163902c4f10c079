"""ModelRunner: the facade. It holds state and call order and delegates all the work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast, overload

from datasets import Dataset
from transformers import set_seed

from .adapters import count_parameters, keep_4bit_weights_trainable
from .data.control_tokens import ControlTokenPolicy
from .data.encoding import ChatEncoder, TrainOn
from .data.formats import Message
from .data.loading import DataSource, read_source
from .data.prepared import DataOptions, DataReport, PreparedData
from .data.preview import Preview, spans
from .data.rows import OnBadRows
from .data.templates import ResolvedTemplate, resolve_template
from .errors import UsageError
from .eval.comparison import eval_dataset, evaluate_runner
from .eval.evaluation import EVALUATION_FILE, EvalResult
from .eval.generation import Reply, as_conversation, generate_batch, stream_reply
from .methods import get_method, has_adapter, make_trainable
from .modeling import DEFAULT_MODEL, ensure_pad_token, load_tokenizer, model_type, resolve_model
from .notebook import LiveLossPlot, html_table, in_notebook, runner_rows
from .records import saving
from .tasks import TASKS
from .tasks.base import BuildsModelFromData, ModelLoading, Predicts, Previews, Scores
from .train.arguments import run_arguments
from .train.checkpoints import make_resumable
from .train.distributed import is_main_process, main_process_first, on_main_process
from .train.engine import TrainResult, run_trainer
from .train.run_folder import Resume, check_free_space, save_run, start_run
from .train.settings import MethodName, TrainSettings, build_settings

RUNS_DIR = "easyllm-runs"


class ModelRunner:
    """Load a model, learn from your data, and talk to it.

    >>> runner = ModelRunner()                          # built-in SmolLM2-135M-Instruct, offline
    >>> runner.load_data("examples/data/identity.jsonl")
    >>> runner.train()
    >>> runner.generate("Who are you?")

    `model` is None (the built-in default), a built-in alias, a local folder or a hub id.
    `method` is "lora" (default), "qlora" (4-bit base), "full" or another registered method;
    `template` overrides the tokenizer's chat template with a Jinja string. Remote code runs only
    with `trust_remote_code=True`.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        task: str = "sft",
        method: MethodName = "lora",
        template: str | None = None,
        trust_remote_code: bool = False,
        seed: int = 42,
    ) -> None:
        self._setup(
            model,
            task=task,
            method=method,
            template=template,
            trust_remote_code=trust_remote_code,
            seed=seed,
            tokenizer_source=None,
        )

    def _setup(
        self,
        model: str | os.PathLike | None,
        *,
        task: str,
        method: str,
        template: str | None,
        trust_remote_code: bool,
        seed: int,
        tokenizer_source: str | None,
        max_length: int = 1024,
    ) -> None:
        self.model_name = str(model) if model is not None else DEFAULT_MODEL
        self.task_name = task
        self.task = TASKS.get(task)
        self.settings = TrainSettings(method=method)
        self.seed = seed
        self.trust_remote_code = trust_remote_code
        self._source = resolve_model(model)
        self.tokenizer = load_tokenizer(
            tokenizer_source or self._source, trust_remote_code=trust_remote_code
        )
        self.template: ResolvedTemplate | None = None
        self.encoder: ChatEncoder | None = None
        if (
            self.task.capabilities.chat_template or self.task.capabilities.generative
        ):  # generate() renders
            self.template = resolve_template(
                self.tokenizer,
                template=template,
                model_type=model_type(self._source, trust_remote_code),
            )
            self.tokenizer.chat_template = (
                self.template.source
            )  # saved with the tokenizer: reloads chat the same
            self.encoder = ChatEncoder(self.tokenizer)
        self.data: PreparedData | None = None
        self.data_options = DataOptions(
            seed=seed, max_length=max_length
        )  # what load_data read with
        self._data_path: str | None = None  # what load_data() read, for reproduce.json
        self.last_result: TrainResult | None = None
        self.run_dir: Path | None = (
            None  # the run folder (after train() or load()): evaluate() writes there
        )
        self.model = None
        self.model = self._load_model()

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

        `source`: a .jsonl/.json/.csv/.parquet/.txt file, a folder of them, a list of dicts or a
        datasets object, in any shape of docs/data.md (other names via `columns=`). Bad rows raise
        one DataError naming each file:line (`on_bad_rows="skip"`: train on the rest, rejects.jsonl).
        `max_length` is saved with the model; longer examples are fitted as data/truncation.py says.
        """
        options = DataOptions(
            val_size=val_size,
            seed=self.seed if seed is None else seed,
            max_length=max_length,
            input_key=input_key,
            output_key=output_key,
            columns=columns,
            on_bad_rows=on_bad_rows,
            train_on=train_on,
            on_control_tokens=on_control_tokens,
        )
        with main_process_first():  # several processes: prepare once, the others reuse the cache
            self.data = self.task.prepare(
                read_source(source), self.tokenizer, self.encoder, options
            )
        self._data_path = str(source) if isinstance(source, (str, os.PathLike)) else None
        self.data_options = options
        if self.template is not None and self.task.capabilities.chat_template:
            self.data.report.template = f"{self.template.name} ({self.template.reason})"
        if is_main_process():
            print(self.data.report)
        return self.data.report

    def preview(self, n: int = 3, *, split: str = "train") -> Preview:
        """The first `n` examples as the model sees them, trained tokens highlighted.

        Prints in colour in a terminal and renders as HTML in Jupyter; `str()` marks
        trained text as [[...]].
        """
        if self.data is None:
            raise UsageError("Nothing to preview: call runner.load_data(...) first.")
        if not self.task.capabilities.previews:
            raise UsageError(
                f"preview() shows tokenized examples; task '{self.task_name}' tokenizes at training time."
            )
        dataset = self.data.train if split == "train" else self.data.validation
        if dataset is None:
            raise UsageError(
                "There is no validation split: load_data(..., val_size=0.1) holds one out."
            )
        task = cast(Previews, self.task)
        return Preview(
            [
                spans(self.tokenizer, *task.preview_ids(dataset[i]))
                for i in range(min(n, len(dataset)))
            ]
        )

    def train(
        self, *, resume: Resume = False, overwrite: bool = False, **overrides: Any
    ) -> TrainResult:
        """Fine-tune on the loaded data and save the run; any TrainingArguments field can be overridden.

        `resume=True` continues the newest checkpoint (of `output_dir`, else of this model's newest
        unfinished run) and refuses a changed run; `overwrite=True` replaces a finished one. Ctrl-C
        stops after writing a checkpoint. See docs/reliability.md.

        >>> runner.train(method="qlora", num_train_epochs=5, learning_rate=1e-4)
        >>> runner.train(output_dir="runs/a", resume=True)  # after a crash, a kill or Ctrl-C
        """
        if self.data is None:
            raise UsageError(
                "No training data yet: call runner.load_data('file.jsonl') before train()."
            )
        settings = build_settings(self.settings, overrides)
        run, manifest = start_run(
            settings,
            self.model_name,
            RUNS_DIR,
            self.data,
            self.tokenizer,
            self.template and self.template.source,
            self.seed,
            resume,
            overwrite,
        )
        self._switch_method(settings.method)
        self.settings = settings
        set_seed(self.seed)  # LoRA weights are initialised before the Trainer seeds anything
        if self.model is None:  # a task whose model depends on the data (e.g. its labels)
            self.model = self._load_model()
        self.model = make_trainable(
            self.model, settings, task_type=self.task.capabilities.peft_task_type
        )
        trainable, total = count_parameters(self.model)
        args = run_arguments(
            settings,
            str(run.path),
            self.seed,
            self.data.validation is not None,
            model_config=self.model.config,
            longest_example=self.data.longest_example,
        )
        on_main_process(check_free_space, run.path, self.model, args)
        on_main_process(
            saving.record_run, self, run.path, manifest, args
        )  # before training: crashes are recorded
        if is_main_process():
            start = f"; resuming from {run.resume_from.name}" if run.resume_from else ""
            print(
                f"easyllm: {settings.method} training {trainable:,} of {total:,} parameters; "
                f"the run is saved in {run.path}{start}"
            )
        trainer = make_resumable(
            self.task.build_trainer(self.model, self.tokenizer, self.data, args, settings),
            manifest,
            run.resume_from,
        )
        if in_notebook():
            trainer.add_callback(LiveLossPlot())
        result = run_trainer(
            trainer, self.data, resume_from=run.resume_from, compile=settings.compile
        )
        result.metrics["trainable_parameters"] = trainable
        self.run_dir = run.path
        if self.data.validation is not None:
            result.metrics.update(self.evaluate())
        save_run(lambda: saving.save(self, run.path, result=result), run.path)
        self.last_result = result
        return result

    def evaluate(
        self,
        data: DataSource | None = None,
        *,
        batch_size: int = 8,
        max_samples: int | None = 32,
        max_new_tokens: int | None = None,
        generate: bool = True,
        compare: bool | ModelRunner = False,
    ) -> EvalResult:
        """Held-out metrics on the validation split or `data`; with a run folder, also in evaluation.json.

        Each task gives its own metrics; chat tasks also answer up to `max_samples` held-out prompts
        greedily and score them (exact match, token F1, ROUGE-L, BLEU, runaway rate). `compare=True`
        adds the base model's (adapter off) as base_*, `compare=<ModelRunner>` another model's as
        compare_*. See docs/evaluation.md.

        >>> result = runner.evaluate(compare=True)
        >>> result["rouge_l"], result["base_rouge_l"], result.samples[0].reply
        """
        dataset, described = eval_dataset(self, data)
        result = evaluate_runner(
            self,
            dataset,
            described,
            batch_size=batch_size,
            max_samples=max_samples,
            max_new_tokens=max_new_tokens,
            generate=generate,
            compare=compare,
        )
        if self.run_dir is not None and is_main_process():
            result.save(self.run_dir / EVALUATION_FILE)
        return result

    @overload
    def generate(
        self,
        prompt: str | list[Message],
        *,
        max_new_tokens: int = ...,
        system: str | None = ...,
        stop: list[str] | None = ...,
        batch_size: int = ...,
        return_details: Literal[False] = ...,
        **sampling: Any,
    ) -> str: ...

    @overload
    def generate(
        self,
        prompt: list[str],
        *,
        max_new_tokens: int = ...,
        system: str | None = ...,
        stop: list[str] | None = ...,
        batch_size: int = ...,
        return_details: Literal[False] = ...,
        **sampling: Any,
    ) -> list[str]: ...

    @overload
    def generate(
        self,
        prompt: str | list[Message],
        *,
        max_new_tokens: int = ...,
        system: str | None = ...,
        stop: list[str] | None = ...,
        batch_size: int = ...,
        return_details: Literal[True],
        **sampling: Any,
    ) -> Reply: ...

    @overload
    def generate(
        self,
        prompt: list[str],
        *,
        max_new_tokens: int = ...,
        system: str | None = ...,
        stop: list[str] | None = ...,
        batch_size: int = ...,
        return_details: Literal[True],
        **sampling: Any,
    ) -> list[Reply]: ...

    def generate(
        self,
        prompt,
        *,
        max_new_tokens: int = 256,
        system: str | None = None,
        stop: list[str] | None = None,
        batch_size: int = 16,
        return_details: bool = False,
        **sampling,
    ):
        """Answer a prompt (str -> str), a batch (list[str] -> list[str]) or a message list (-> str).

        Greedy by default (pass temperature, top_p, ... to sample); prompts are rendered as in
        training and replies end at the end-of-turn token or a `stop` string. `return_details=True`
        gives Reply objects (text, finish_reason "stop" or "length", generated_tokens).
        """
        encoder = self._require_generative()
        single = isinstance(prompt, str) or (bool(prompt) and isinstance(prompt[0], dict))
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            return []
        conversations = [as_conversation(p, system) for p in prompts]
        replies = generate_batch(
            self.model,
            encoder,
            conversations,
            max_new_tokens,
            stop,
            batch_size=batch_size,
            **sampling,
        )
        if not return_details:
            replies = [reply.text for reply in replies]
        return replies[0] if single else replies

    def stream(
        self,
        prompt: str | list[Message],
        *,
        max_new_tokens: int = 256,
        system: str | None = None,
        stop: list[str] | None = None,
        **sampling: Any,
    ) -> Iterator[str]:
        """Like generate() for one prompt, but yields the text as it is produced.

        >>> for piece in runner.stream("Tell me a story"): print(piece, end="", flush=True)
        """
        encoder = self._require_generative()
        return stream_reply(
            self.model, encoder, as_conversation(prompt, system), max_new_tokens, stop, **sampling
        )

    @overload
    def predict(
        self,
        texts: list[str] | list[tuple[str, str]],
        *,
        return_scores: Literal[False] = ...,
        batch_size: int = ...,
    ) -> list[str | int]: ...

    @overload
    def predict(
        self,
        texts: list[str] | list[tuple[str, str]],
        *,
        return_scores: Literal[True],
        batch_size: int = ...,
    ) -> list[tuple[str | int, dict[str | int, float]]]: ...

    def predict(self, texts, *, return_scores=False, batch_size=16):
        """The label of each text (or (text, text_pair) tuple); with return_scores, each label's probability too.

        Texts are cut at the `max_length` the model was trained with.

        >>> runner.predict(["where is my parcel?"])
        ['track_order']
        """
        if not self.task.capabilities.predicts:
            raise UsageError(
                f"predict() needs a classification task; task '{self.task_name}' is not one "
                "(use generate())."
            )
        return cast(Predicts, self.task).predict(
            self._require_model(),
            self.tokenizer,
            texts,
            max_length=self.data_options.max_length,
            batch_size=batch_size,
            return_scores=return_scores,
        )

    def score(self, texts: list[str | list[Message]], *, batch_size: int = 8) -> list[float]:
        """Rewards of a reward model (task="rm"), one per reply (str) or conversation; higher is preferred.

        >>> runner.score([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]])
        """
        if not self.task.capabilities.scores:
            raise UsageError(
                f"score() needs a reward model (task='rm'); task '{self.task_name}' gives no scores."
            )
        return cast(Scores, self.task).score(
            self._require_model(), self.tokenizer, self.encoder, texts, batch_size=batch_size
        )

    # -- saving ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the adapter (or full weights), tokenizer, settings and a model card (README.md).

        Reload with ModelRunner.load(path). Nothing secret is written: tokens never reach a file.
        """
        return saving.save(self, Path(path))

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, template: str | None = None, strict: bool = False
    ) -> ModelRunner:
        """Reload a folder written by save() or train(): same model, adapter, tokenizer, template and max_length.

        Chats must render as in training: if they do not (another `template=`, or a library
        version that tokenizes the saved tokenizer differently), a TemplateDriftWarning shows the
        difference; `strict=True` raises ConfigError instead.
        """
        return saving.load(cls, Path(path), template=template, strict=strict)

    def merge(
        self, path: str | os.PathLike, *, check: bool = True, prompts: list[str] | None = None
    ) -> Path:
        """Write the LoRA adapter merged into full-precision base weights: a plain transformers folder.

        QLoRA merges into the de-quantized 4-bit weights it trained on. `check`: the adapter and the
        merged model answer a few held-out prompts (or `prompts`); agreement and log-prob drift are
        printed and written to parity.json (docs/reliability.md).
        """
        return saving.merge(self, Path(path), check=check, prompts=prompts)

    def push_to_hub(
        self, repo_id: str, *, private: bool = False, token: str | None = None, merge: bool = False
    ) -> str:
        """Upload what save() writes (or, with merge=True, merged full weights) to the Hugging Face Hub.

        Returns the repository URL. The model card goes along either way; the token is only
        handed to huggingface_hub, never written or printed.
        """
        return saving.push(self, repo_id, private=private, token=token, merge=merge)

    # -- internals ---------------------------------------------------------------------------
    def _loading(self) -> ModelLoading:
        return ModelLoading(self._source, self.settings.method_entry, self.trust_remote_code)

    def _model_info(self, saved: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """What a `model_from_data` task's model needs (None: not known yet); {} for every other task."""
        if not self.task.capabilities.model_from_data:
            return {}
        if saved is not None:
            return saved
        task = cast(BuildsModelFromData, self.task)
        return (
            task.saved_info(self.model)
            if self.model is not None
            else task.model_info(self._loading(), self.data)
        )

    def _load_model(self, saved_info: dict[str, Any] | None = None):
        info = self._model_info(saved_info)
        model = self.task.load_model(self._loading(), info) if info is not None else None
        end_of_turn = (
            self.encoder.end_of_turn_ids if self.encoder else [self.tokenizer.eos_token_id]
        )
        ensure_pad_token(self.tokenizer, model, [t for t in end_of_turn if t is not None])
        if model is not None:
            keep_4bit_weights_trainable(model)  # before any generate() can repack them
        return model

    def _task_metrics(self, model, dataset: Dataset, batch_size: int) -> dict[str, float]:
        return self.task.evaluate(
            model, self.tokenizer, dataset, batch_size, self.data_options.max_length
        )

    def _require_generative(self) -> ChatEncoder:
        if not self.task.capabilities.generative or self.encoder is None:
            raise UsageError(
                f"generate() needs a generative task; task '{self.task_name}' is not one."
            )
        self._require_model()
        return self.encoder

    def _require_model(self):
        if self.model is None:
            raise UsageError(
                f"Task '{self.task_name}' builds its model from the data: call load_data() and train()."
            )
        return self.model

    def _switch_method(self, method: str) -> None:
        """Each method loads its base its own way (4-bit or not): reload if the new one differs."""
        if self.model is None or get_method(method).matches(self.model):
            return
        if has_adapter(self.model) or self.last_result is not None:
            raise UsageError(
                f"This model was already trained with method='{self.settings.method}'. To train with "
                f"method='{method}', start a new ModelRunner."
            )
        self.settings = TrainSettings(method=method)
        self.model = self._load_model()

    def _repr_html_(self) -> str:
        return html_table(runner_rows(self, details=True), "ModelRunner")

    def __repr__(self) -> str:
        rows = runner_rows(self)
        data = f", train={self.data.report.train_examples}" if self.data else ""
        return (
            f"ModelRunner(model={rows['model']!r}, task={rows['task']!r}, method={rows['method']!r}, "
            f"parameters={rows['parameters']}, trainable={rows['trainable']}{data})"
        )
