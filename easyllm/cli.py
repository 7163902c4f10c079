"""`easyllm` on the command line: a thin layer that parses arguments and calls ModelRunner.

easyllm train --model M --data F [--task sft] [--method lora] [--epochs 3] [--output-dir D]
easyllm train config.yaml                 # the same keys as the Python arguments
easyllm generate RUN_DIR --prompt "..."   easyllm chat RUN_DIR
easyllm eval RUN_DIR --data F             easyllm export RUN_DIR --merge OUT_DIR
easyllm serve RUN_DIR_OR_MODEL [--port 8000]
easyllm synthesize PROMPTS (--teacher RUN_DIR_OR_MODEL | --endpoint URL --endpoint-model NAME)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn, TypeAlias

from .cli_train import add_train_arguments, cmd_train
from .errors import ConfigError, EasyLLMError
from .version import __version__

TRUST_HELP = "run the model's own code (a Hub model that needs trust_remote_code)"


def _any_runner(spec: str, trust_remote_code: bool = False):
    """A folder written by train()/save() is reloaded with its adapter; anything else is a model.

    A merged or plain model folder (no easyllm.json) is loaded as a model.
    """
    from .records.folder import SAVE_INFO_FILE
    from .runner import ModelRunner

    if (Path(spec) / SAVE_INFO_FILE).is_file():
        return ModelRunner.load(spec, trust_remote_code=trust_remote_code)
    return ModelRunner(spec, trust_remote_code=trust_remote_code)


def cmd_generate(args: argparse.Namespace) -> None:
    runner = _any_runner(args.run_dir, args.trust_remote_code)
    print(runner.generate(args.prompt, max_new_tokens=args.max_new_tokens, system=args.system))


def cmd_chat(args: argparse.Namespace) -> None:
    runner = _any_runner(args.run_dir, args.trust_remote_code)
    history: list[dict[str, str]] = (
        [{"role": "system", "content": args.system}] if args.system else []
    )
    print("Chatting with", args.run_dir, "(empty line or Ctrl-D to quit, Ctrl-C stops a reply)")
    for text in _typed_lines():
        history.append({"role": "user", "content": text})
        history.append({"role": "assistant", "content": _reply(runner, history, args)})


def _typed_lines() -> Iterator[str]:
    """Lines typed (or piped in) until an empty line, end of input, or Ctrl-C at the prompt."""
    while True:
        try:
            line = input("> ") if sys.stdin.isatty() else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not line.strip():
            return
        yield line.strip()


def _reply(runner, history: list[dict[str, str]], args: argparse.Namespace) -> str:
    """Stream one reply; Ctrl-C stops it and keeps what was said, so the chat goes on."""
    pieces: list[str] = []
    try:
        for piece in runner.stream(history, max_new_tokens=args.max_new_tokens):
            print(piece, end="", flush=True)
            pieces.append(piece)
    except KeyboardInterrupt:
        print(" [stopped]", end="")
    print()
    return "".join(pieces).strip()


def cmd_eval(args: argparse.Namespace) -> None:
    result = _any_runner(args.run_dir, args.trust_remote_code).evaluate(
        args.data,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        max_new_tokens=args.max_new_tokens,
        generate=args.generate,
        compare=args.compare,
    )
    print(json.dumps(dict(result), indent=2))  # stdout stays the metrics as JSON
    print(f"Replies side by side: {Path(args.run_dir) / 'evaluation.json'}", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> None:
    runner = _any_runner(args.run_dir, args.trust_remote_code)
    merged = runner.merge(args.merge, check=not args.no_check)
    print(f"Merged weights written to {merged}")


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve import serve

    serve(
        _any_runner(args.model, args.trust_remote_code),
        args.host,
        args.port,
        model_name=args.name,
        api_key=args.api_key,
        allowed_hosts=args.allowed_host,
        announce=lambda line: print(line, flush=True),
    )


def cmd_synthesize(args: argparse.Namespace) -> None:
    from .synthesis import Endpoint, synthesize

    if (args.teacher is None) == (args.endpoint is None):
        raise ConfigError(
            "Name one teacher: --teacher RUN_DIR_OR_MODEL, or --endpoint URL with "
            "--endpoint-model NAME."
        )
    if args.endpoint is not None and not args.endpoint_model:
        raise ConfigError(
            "--endpoint needs --endpoint-model NAME (the model the server should use)."
        )
    teacher = (
        _any_runner(args.teacher, args.trust_remote_code)
        if args.teacher is not None
        else Endpoint(
            args.endpoint_model,
            base_url=args.endpoint,
            api_key_env=args.api_key_env,
            concurrency=args.concurrency,
        )
    )
    sampling = {"temperature": args.temperature} if args.temperature else {}
    path = synthesize(
        args.inputs,
        teacher,
        output=args.output,
        system=args.system,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        column=args.column,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        **sampling,
    )
    print(f"Training rows in {path}")


# what add_subparsers() returns: each _add_* function adds one command (or two) to it
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose error is one line pointing at --help (train's usage is long)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="easyllm", description="Fine-tune a language model in three lines.")
    parser.add_argument("--version", action="version", version=f"easyllm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    _add_generate_and_chat(commands)
    _add_eval(commands)
    _add_export(commands)
    _add_serve(commands)
    _add_synthesize(commands)
    return parser


def _add(
    commands: Commands, name: str, handler: Callable[[argparse.Namespace], None], help_text: str
) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.set_defaults(handler=handler)
    if name != "train":  # train's flags come from one table (cli_train.SETTINGS)
        sub.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    return sub


def _add_train(commands: Commands) -> None:
    train = _add(
        commands, "train", cmd_train, "Fine-tune a model on a data file, or as a YAML config says."
    )
    add_train_arguments(train)


def _add_generate_and_chat(commands: Commands) -> None:
    for name, handler, help_text in (
        ("generate", cmd_generate, "Answer one prompt with a trained run."),
        ("chat", cmd_chat, "Chat with a trained run, streaming the replies."),
    ):
        sub = _add(commands, name, handler, help_text)
        sub.add_argument(
            "run_dir", help="a folder written by train() or save(), or a model folder or hub id"
        )
        if name == "generate":
            sub.add_argument("--prompt", required=True)
        sub.add_argument("--system", help="a system prompt")
        sub.add_argument("--max-new-tokens", type=int, default=256)


def _add_eval(commands: Commands) -> None:
    evaluate = _add(commands, "eval", cmd_eval, "Held-out metrics of a trained run on a data file.")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument(
        "--compare",
        action="store_true",
        help="also answer with the adapter off (the base model), side by side",
    )
    evaluate.add_argument(
        "--max-samples",
        type=int,
        default=32,
        help="held-out prompts to answer (generation is the costly part)",
    )
    evaluate.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="reply length limit (default: 256, or 2x the longest reference + 16)",
    )
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument(
        "--no-generate", dest="generate", action="store_false", help="loss and perplexity only"
    )


def _add_export(commands: Commands) -> None:
    export = _add(commands, "export", cmd_export, "Merge a LoRA run into full-precision weights.")
    export.add_argument("run_dir")
    export.add_argument(
        "--merge", required=True, metavar="OUT_DIR", help="folder for the merged model"
    )
    export.add_argument(
        "--no-check",
        action="store_true",
        help="skip comparing the merged model's answers with the adapter's (parity.json)",
    )


def _add_serve(commands: Commands) -> None:
    serve = _add(
        commands, "serve", cmd_serve, "Serve a model or run as an OpenAI-compatible chat API."
    )
    serve.add_argument(
        "model",
        metavar="RUN_DIR_OR_MODEL",
        help="a run folder, a model folder, hub id or built-in name",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="0.0.0.0 serves other machines (set an API key)"
    )
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument(
        "--api-key",
        help="require this key (Authorization: Bearer KEY); default: $EASYLLM_API_KEY if set. "
        "The environment variable keeps it out of the shell history",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a Host/Origin name to answer besides localhost (repeat it; '*' for any)",
    )
    serve.add_argument("--name", help="the model name the API reports (default: the model's)")


def _add_synthesize(commands: Commands) -> None:
    synth = _add(
        commands,
        "synthesize",
        cmd_synthesize,
        "Have a teacher model answer prompts: training rows for a student.",
    )
    synth.add_argument(
        "inputs", help="prompts: .jsonl, .csv, .json, .parquet or .txt (one per line)"
    )
    synth.add_argument("--teacher", metavar="RUN_DIR_OR_MODEL", help="a local teacher")
    synth.add_argument(
        "--endpoint",
        metavar="URL",
        help="an OpenAI-compatible base URL, e.g. http://localhost:8000/v1",
    )
    synth.add_argument(
        "--endpoint-model", metavar="NAME", help="the model name to ask the endpoint for"
    )
    synth.add_argument(
        "--api-key-env", help="environment variable holding the API key (OpenAI: OPENAI_API_KEY)"
    )
    synth.add_argument("--concurrency", type=int, default=8, help="endpoint requests in flight")
    synth.add_argument(
        "--output", default="synthesized.jsonl", help="rows are appended here; rerun to resume"
    )
    synth.add_argument("--system", help="a system prompt for the teacher (kept in the rows)")
    synth.add_argument(
        "--column", help="the prompt column (default: prompt, instruction, input, question or text)"
    )
    synth.add_argument("--n", type=int, default=1, help="answers per prompt (needs --temperature)")
    synth.add_argument(
        "--temperature", type=float, help="sample at this temperature (default: greedy)"
    )
    synth.add_argument(
        "--max-new-tokens", type=int, default=512, help="longer answers are dropped as truncated"
    )
    synth.add_argument(
        "--batch-size", type=int, default=16, help="prompts per batch for a local teacher"
    )
    synth.add_argument("--min-chars", type=int, help="drop shorter answers")
    synth.add_argument("--max-chars", type=int, help="drop longer answers")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except EasyLLMError as exc:
        print(f"easyllm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
