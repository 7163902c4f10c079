"""ModelRunner: the facade. It holds state and call order and delegates all the work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast, overload

from transformers import set_seed

from .data.control_tokens import ControlTokenPolicy
from .data.encoding import ChatEncoder, TrainOn
from .data.formats import Message
from .data.loading import DataSource
from .data.prepared import DataOptions, DataReport, PreparedData
from .data.preview import Preview
from .data.rows import OnBadRows
from .errors import UsageError
from .eval.comparison import evaluate_runner
from .eval.evaluation import EvalResult
from .eval.generation import Reply, as_conversation, reply_to, stream_reply
from .methods import get_method, has_adapter, make_trainable
from .modeling import DEFAULT_MODEL, resolve_model
from .notebook import runner_html, runner_repr
from .records import saving
from .tasks import TASKS
from .tasks.base import ModelLoading, Predicts, Scores
from .tasks.steps import load_task_model, model_info, prepare_data, preview_rows, setup_tokenizer
from .tasks.training import checked_arguments, resumable_trainer
from .train.distributed import is_main_process, on_main_process
from .train.engine import TrainResult, run_trainer
from .train.run_folder import Resume, start_run
from .train.settings import MethodName, TrainSettings, build_settings

RUNS_DIR = "easyllm-runs"
Texts = list[str] | list[tuple[str, str]]  # what predict() takes


class ModelRunner:
    """Load a model, learn from your data, and talk to it.

    >>> runner = ModelRunner()  # built-in SmolLM2-135M-Instruct, offline
    >>> runner.load_data("examples/data/identity.jsonl"); runner.train(); runner.generate("Who?")

    `model`: None (the built-in default), a built-in alias, a local folder or a hub id; `method`:
    "lora" (default), "qlora" (4-bit base), "full" or another registered one; `template`: a Jinja
    chat template instead of the tokenizer's. Remote code runs only with `trust_remote_code=True`.
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
        self._setup(model, task, method, template, trust_remote_code, seed)

    def _setup(
        self,
        model: str | os.PathLike | None,
        task: str,
        method: str,
        template: str | None,
        trust_remote_code: bool,
        seed: int,
        tokenizer_source: str | None = None,
        max_length: int = 1024,
    ) -> None:
        self.model_name = str(model) if model is not None else DEFAULT_MODEL
        self.task_name = task
        self.task = TASKS.get(task)
        self.settings = TrainSettings(method=method)
        self.seed = seed
        self.trust_remote_code = trust_remote_code
        self._source = resolve_model(model)
        self.tokenizer, self.template, self.encoder = setup_tokenizer(
            self.task, tokenizer_source or self._source, self._source, template, trust_remote_code
        )
        self.data: PreparedData | None = None
        self.data_options = DataOptions(seed=seed, max_length=max_length)  # load_data's options
        self._data_path: str | None = None  # what load_data() read, for reproduce.json
        self.last_result: TrainResult | None = None
        self.run_dir: Path | None = None  # after train() or load(): evaluate() writes there
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

        `source`: a file, folder, list of dicts or datasets object in a shape of docs/data.md.
        Bad rows raise one DataError naming each file:line; `max_length` is saved with the model.
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
        self.data = prepare_data(
            self.task, source, self.tokenizer, self.encoder, self.template, options
        )
        self._data_path = str(source) if isinstance(source, (str, os.PathLike)) else None
        self.data_options = options
        if is_main_process():
            print(self.data.report)
        return self.data.report

    def preview(self, n: int = 3, *, split: str = "train") -> Preview:
        """The first `n` examples as the model sees them, trained tokens highlighted ([[...]])."""
        if self.data is None:
            raise UsageError("Nothing to preview: call runner.load_data(...) first.")
        return preview_rows(self.task, self.task_name, self.tokenizer, self.data, n, split)

    def train(
        self, *, resume: Resume = False, overwrite: bool = False, **overrides: Any
    ) -> TrainResult:
        """Fine-tune on the loaded data and save the run; any TrainingArguments field can be set.

        `resume=True` continues the newest checkpoint (docs/reliability.md).

        >>> runner.train(method="qlora", num_train_epochs=5, learning_rate=1e-4)
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
        args = checked_arguments(settings, run.path, self.seed, self.model, self.data)
        # before training: a run that crashes is recorded too
        on_main_process(saving.record_run, self, run.path, manifest, args)
        trainer, trainable = resumable_trainer(
            self.task, self.model, self.tokenizer, self.data, args, settings, manifest, run
        )
        result = run_trainer(
            trainer, self.data, resume_from=run.resume_from, compile=settings.compile
        )
        result.metrics["trainable_parameters"] = trainable
        self.run_dir = run.path
        saving.finish_run(self, run.path, result)  # saved first, then evaluated
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
        """Held-out metrics on the validation split or `data`, also in the run's evaluation.json.

        Chat tasks also answer `max_samples` prompts; `compare=True` adds the base model's metrics
        (adapter off) as base_*, `compare=<ModelRunner>` another's as compare_*.

        >>> runner.evaluate(compare=True)["base_rouge_l"]
        """
        return evaluate_runner(
            self,
            data,
            batch_size=batch_size,
            max_samples=max_samples,
            max_new_tokens=max_new_tokens,
            generate=generate,
            compare=compare,
        )

    # the overloads type the prompt and return_details; generate() below has every option
    @overload
    def generate(
        self, prompt: str | list[Message], *, return_details: Literal[False] = ..., **options: Any
    ) -> str: ...

    @overload
    def generate(
        self, prompt: list[str], *, return_details: Literal[False] = ..., **options: Any
    ) -> list[str]: ...

    @overload
    def generate(
        self, prompt: str | list[Message], *, return_details: Literal[True], **options: Any
    ) -> Reply: ...

    @overload
    def generate(
        self, prompt: list[str], *, return_details: Literal[True], **options: Any
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
        """Answer a prompt (str -> str), a batch (list[str] -> list[str]) or messages (-> str).

        Greedy unless sampling options (temperature, ...) are given; `return_details`: Replies.
        """
        encoder = self._require_generative()
        return reply_to(
            self.model,
            encoder,
            prompt,
            max_new_tokens=max_new_tokens,
            system=system,
            stop=stop,
            batch_size=batch_size,
            return_details=return_details,
            **sampling,
        )

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
        self, texts: Texts, *, return_scores: Literal[False] = ..., batch_size: int = ...
    ) -> list[str | int]: ...

    @overload
    def predict(
        self, texts: Texts, *, return_scores: Literal[True], batch_size: int = ...
    ) -> list[tuple[str | int, dict[str | int, float]]]: ...

    def predict(self, texts, *, return_scores=False, batch_size=16):
        """The label of each text or (text, text_pair) tuple; `return_scores`: with probabilities.

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
        """A reward model's (task="rm") reward for each reply or conversation; higher is preferred.

        >>> chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
        >>> runner.score([chat, "Hello!"])
        """
        if not self.task.capabilities.scores:
            raise UsageError(
                f"score() needs a reward model (task='rm'); task '{self.task_name}' gives "
                "no scores."
            )
        return cast(Scores, self.task).score(
            self._require_model(), self.tokenizer, self.encoder, texts, batch_size=batch_size
        )

    # -- saving ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the adapter (or full weights), tokenizer, settings and model card; no secrets."""
        return saving.save(self, Path(path))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        template: str | None = None,
        strict: bool = False,
        trust_remote_code: bool = False,
    ) -> ModelRunner:
        """Reload a folder written by save() or train(), with its adapter, template and max_length.

        Chats rendering unlike in training warn (`strict=True`: raise). Remote code runs only with
        `trust_remote_code=True`, never because the folder says so.
        """
        return saving.load(
            cls, Path(path), template=template, strict=strict, trust=trust_remote_code
        )

    def merge(
        self, path: str | os.PathLike, *, check: bool = True, prompts: list[str] | None = None
    ) -> Path:
        """Write the LoRA adapter merged into full-precision base weights, checked (parity.json)."""
        return saving.merge(self, Path(path), check=check, prompts=prompts)

    def push_to_hub(
        self, repo_id: str, *, private: bool = False, token: str | None = None, merge: bool = False
    ) -> str:
        """Upload what save() (or, with `merge`, merge()) writes to the Hub; returns the URL."""
        return saving.push(self, repo_id, private=private, token=token, merge=merge)

    # -- internals ---------------------------------------------------------------------------
    def _loading(self) -> ModelLoading:
        return ModelLoading(self._source, self.settings.method_entry, self.trust_remote_code)

    def _model_info(self, saved: dict[str, Any] | None = None) -> dict[str, Any] | None:
        return model_info(self.task, self._loading(), self.model, self.data, saved)

    def _load_model(self, saved_info: dict[str, Any] | None = None):
        info = self._model_info(saved_info)
        return load_task_model(self.task, self._loading(), info, self.tokenizer, self.encoder)

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
                f"Task '{self.task_name}' builds its model from the data: call load_data() and "
                "train()."
            )
        return self.model

    def _switch_method(self, method: str) -> None:
        """Each method loads its base its own way (4-bit or not): reload if the new one differs."""
        if self.model is None or get_method(method).matches(self.model):
            return
        if has_adapter(self.model) or self.last_result is not None:
            raise UsageError(
                f"This model was already trained with method='{self.settings.method}'. To train "
                f"with method='{method}', start a new ModelRunner."
            )
        self.settings = TrainSettings(method=method)
        self.model = self._load_model()

    _repr_html_ = runner_html
    __repr__ = runner_repr
