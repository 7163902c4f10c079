"""Every private hook of transformers, TRL, torch, bitsandbytes (and datasets) easyllm relies on.

easyllm overrides private Trainer methods, replaces the hooks with which TRL's trainers tokenize,
calls torch's CPU flash-attention kernels and undoes bitsandbytes' CPU repacking of 4-bit weights.
None of it is public API: a release may rename or drop any of it without a deprecation, and
easyllm would then fail, or worse, silently train differently. `HOOKS` names each one, what
easyllm uses it for, where, and the library version it was checked on; `check_hooks()` (run by
tests/test_compat.py, or `python easyllm/compat.py`, which works even where `import easyllm` no
longer does) says which are gone or changed.

After an upgrade, for each problem: adapt the easyllm code named in it, then its entry here.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import warnings
from dataclasses import dataclass
from typing import Any

# The installed versions every entry was checked on (importlib.metadata), unless it says otherwise.
TRANSFORMERS, TRL, TORCH, BITSANDBYTES, DATASETS = "5.24.0", "1.16.0", "2.13.0", "0.50.2", "5.2.0"
OPTIONAL = frozenset({"trl", "bitsandbytes"})  # easyllm runs without them: absent means skipped


@dataclass(frozen=True)
class Hook:
    """One private name easyllm depends on; the checks say what about it must stay true."""

    library: str  # distribution and top-level module
    name: str  # dotted path
    used_by: str  # the easyllm concept, and the function or class that uses the hook
    purpose: str  # read as "easyllm's <used_by> uses it to <purpose>"
    checked_on: str
    params: tuple[str, ...] = ()  # parameter names easyllm passes or overrides
    mentions: tuple[str, ...] = ()  # code that must still appear in the source of `source`
    source: str = ""  # dotted object whose source holds `mentions` (default: the hook itself)
    runtime: bool = False  # an attribute set on instances: only `mentions` can show it is there


_TRAINER = "transformers.Trainer"
_PARTS = ("dataset", "processing_class", "args", "dataset_name")

# The table keeps one entry per hook, its fields in Hook's order.
# fmt: off
HOOKS: tuple[Hook, ...] = (
    # -- transformers: atomic, resumable checkpoints (ResumableMixin, make_resumable, EpochRng)
    Hook("transformers", _TRAINER, "resumable trainers (make_resumable)",
         "swap a built trainer's __class__ for a ResumableMixin subclass, whose overrides the "
         "Trainer reaches through self", TRANSFORMERS,
         mentions=("self._save_checkpoint(", "self._get_train_sampler")),
    Hook("transformers", f"{_TRAINER}._save_checkpoint", "atomic checkpoints (ResumableMixin)",
         "write each checkpoint into a staging folder and rename it into place", TRANSFORMERS,
         params=("model", "trial"), mentions=("self._get_output_dir(",)),
    Hook("transformers", f"{_TRAINER}._get_output_dir", "atomic checkpoints (ResumableMixin)",
         "point the Trainer's checkpoint writing at the staging folder", TRANSFORMERS,
         params=("trial",)),
    Hook("transformers", f"{_TRAINER}._get_train_sampler", "multi-process data order "
         "(ResumableMixin._get_train_sampler)", "group lengths by the global batch", TRANSFORMERS,
         params=("train_dataset",), mentions=("LengthGroupedSampler(",)),
    Hook("transformers", "transformers.trainer_pt_utils.LengthGroupedSampler.batch_size",
         "multi-process data order (ResumableMixin._get_train_sampler)",
         "scale the sampler's batch size by the number of processes", TRANSFORMERS,
         mentions=("self.batch_size",), source="transformers.trainer_pt_utils.LengthGroupedSampler",
         runtime=True),
    Hook("transformers", f"{_TRAINER}._load_rng_state", "exact resume (EpochRng.on_epoch_begin)",
         "restore a checkpoint's RNG state before the epoch's order is drawn", TRANSFORMERS,
         params=("checkpoint",)),
    Hook("transformers", f"{_TRAINER}.compute_loss", "trained-token loss (TrainedTokenTrainer) and "
         "reward models (PairwiseRewardTrainer)", "replace the loss", TRANSFORMERS,
         params=("model", "inputs", "return_outputs", "num_items_in_batch")),
    # -- transformers: per-example attention for packed batches (packed_attention)
    Hook("transformers", "transformers.PreTrainedModel._can_set_attn_implementation",
         "packed attention (supports_packed_attention)",
         "tell whether the attention can be switched at run time", TRANSFORMERS),
    Hook("transformers", "transformers.PreTrainedConfig._attn_implementation",
         "packed attention (supports_packed_attention, packed_attention)",
         "read the model's attention, and restore it after training", TRANSFORMERS),
    Hook("transformers", "transformers.integrations.sdpa_attention.sdpa_attention_forward",
         "packed attention (packed_attention_forward)",
         "run transformers' own SDPA attention on forwards that are not packed", TRANSFORMERS,
         params=("module", "query", "key", "value", "attention_mask", "dropout", "scaling")),
    Hook("transformers", "transformers.integrations.sdpa_attention.repeat_kv",
         "packed attention (_CpuSpanAttention)",
         "repeat grouped-query key/value heads for the CPU flash kernel", TRANSFORMERS,
         params=("hidden_states", "n_rep")),
    # -- TRL: trainers fed easyllm's token ids (preference.pretokenized; DPO, KTO, ORPO tasks)
    Hook("trl", "trl.DPOTrainer._prepare_dataset", "DPO task (pretokenized DPOTrainer, _keep_ids)",
         "skip TRL's tokenization: rows arrive as prompt_ids/chosen_ids/rejected_ids, and "
         "DPOTask.evaluate reads the stored reference log-probs", TRL, params=_PARTS,
         mentions=("self._prepare_dataset(", "prompt_ids", "chosen_ids", "rejected_ids",
                   "ref_chosen_logps", "ref_rejected_logps"), source="trl.DPOTrainer"),
    Hook("trl", "trl.KTOTrainer._prepare_dataset", "KTO task (pretokenized KTOTrainer, _keep_ids)",
         "skip TRL's tokenization: rows arrive as prompt_ids/completion_ids, easyllm adds "
         "KL_completion_ids, and KTOTask.evaluate reads ref_logps", TRL, params=_PARTS,
         mentions=("self._prepare_dataset(", "prompt_ids", "completion_ids", "KL_completion_ids",
                   "ref_logps"), source="trl.KTOTrainer"),
    Hook("trl", "trl.KTOTrainer.calculate_KL", "KTO task (_keep_ids)",
         "add the KL term's mismatched completions only when TRL computes that term", TRL,
         mentions=("self.calculate_KL =",), source="trl.KTOTrainer.__init__", runtime=True),
    Hook("trl", "trl.experimental.orpo.ORPOTrainer.tokenize_row",
         "ORPO task (pretokenized ORPOTrainer, _from_ids)",
         "build ORPO's prompt/chosen/rejected input ids and labels from easyllm's ids", TRL,
         params=("feature", "model"), mentions=("self.tokenize_row",),
         source="trl.experimental.orpo.ORPOTrainer"),
    # -- torch: per-span CPU flash attention (_CpuSpanAttention)
    Hook("torch", "torch.ops.aten._scaled_dot_product_flash_attention_for_cpu",
         "packed attention (_CpuSpanAttention.forward)",
         "run causal attention per example and keep its log-sum-exp", TORCH,
         params=("query", "key", "value", "dropout_p", "is_causal", "scale")),
    Hook("torch", "torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward",
         "packed attention (_CpuSpanAttention.backward)",
         "compute the attention gradient in fp32 from the kept log-sum-exp", TORCH,
         params=("grad_out", "query", "key", "value", "out", "logsumexp", "dropout_p", "is_causal",
                 "scale")),
    # -- torch: compiled decoder layers (compiled_layers)
    Hook("torch", "torch._dynamo.config.suppress_errors", "compiled layers (compiled_layers)",
         "fall back to eager layers when compiling fails", TORCH),
    *(Hook("torch", f"torch._functorch.config.{option}", "compiled layers (compiled_layers)",
           "let the backward recompute cheap element-wise results (less memory kept); without "
           "it easyllm silently keeps them", TORCH)
      for option in ("ban_recompute_materialized_backward", "ban_recompute_used_far_apart",
                     "ban_recompute_long_fusible_chains")),
    Hook("torch", "torch.nn.Module._compiled_call_impl", "compiled layers (compiled_layers)",
         "undo layer.compile() after training, so generation is not traced again", TORCH,
         mentions=("self._compiled_call_impl",), source="torch.nn.Module.compile"),
    # -- bitsandbytes: 4-bit weights that keep their gradient (keep_4bit_weights_trainable)
    Hook("bitsandbytes", "bitsandbytes.functional._convert_weight_packed_for_cpu_inverse",
         "QLoRA (keep_4bit_weights_trainable, copy_dequantized_weights)",
         "undo the CPU inference packing of 4-bit weights, whose kernel has no backward",
         BITSANDBYTES, params=("packed_weight", "quant_state")),
    Hook("bitsandbytes", "bitsandbytes.nn.Linear4bit.support_avx512bf16_for_cpu",
         "QLoRA (keep_4bit_weights_trainable)", "stop Linear4bit repacking its weights in eval",
         BITSANDBYTES, mentions=("self.support_avx512bf16_for_cpu",),
         source="bitsandbytes.nn.Linear4bit.forward", runtime=True),
    Hook("bitsandbytes", "bitsandbytes.functional.QuantState.packing_format_for_cpu",
         "QLoRA (keep_4bit_weights_trainable)", "tell whether a layer's weights were repacked",
         BITSANDBYTES, mentions=("packing_format_for_cpu",),
         source="bitsandbytes.nn.Linear4bit.forward", runtime=True),
    # -- datasets: quiet cache writes (the encoded-data cache)
    Hook("datasets", "datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS",
         "encoded-data cache (_no_datasets_progress_bars)",
         "leave progress bars to an explicit HF_DATASETS_DISABLE_PROGRESS_BARS", DATASETS),
)
# fmt: on


def resolve(dotted: str) -> Any:
    """The object at `dotted`, importing submodules on the way; ImportError/AttributeError: gone."""
    parts = dotted.split(".")
    found: Any = importlib.import_module(parts[0])
    for index, part in enumerate(parts[1:], start=2):
        try:
            found = getattr(found, part)
        except AttributeError:
            found = importlib.import_module(".".join(parts[:index]))
    return found


def parameter_names(function: Any) -> set[str]:
    """Parameter names of a function, or of a torch operator (from its schema)."""
    schema = getattr(getattr(function, "default", None), "_schema", None)
    if schema is not None:
        return {argument.name for argument in schema.arguments}
    return set(inspect.signature(function).parameters)


def _problem(hook: Hook, version: str, what: str) -> str:
    return (
        f"{hook.library} {version} {what}, which easyllm's {hook.used_by} uses to "
        f"{hook.purpose} (checked on {hook.library} {hook.checked_on}): update easyllm and "
        f"easyllm.compat, or pin {hook.library} to a checked version"
    )


def _change(hook: Hook) -> str | None:
    """What is no longer as easyllm expects about `hook` ("no longer has ..."), or None."""
    try:
        found = None if hook.runtime else resolve(hook.name)
    except (ImportError, AttributeError):
        return f"no longer has {hook.name}"
    try:
        missing = [name for name in hook.params if name not in parameter_names(found)]
    except (TypeError, ValueError) as error:
        return f"has no readable signature for {hook.name} ({error})"
    if missing:
        return f"changed {hook.name}: it has no parameter {', '.join(map(repr, missing))}"
    if not hook.mentions:
        return None
    where = hook.source or hook.name
    try:
        code = inspect.getsource(resolve(hook.source) if hook.source else found)
    except (ImportError, AttributeError):
        return f"no longer has {where}"
    except (OSError, TypeError) as error:
        return f"has no readable source for {where} ({error}), so {hook.name} cannot be checked"
    absent = ", ".join(repr(text) for text in hook.mentions if text not in code)
    change = "no longer sets or reads" if hook.runtime else "changed"
    return f"{change} {hook.name}: {where} no longer contains {absent}" if absent else None


def check_hooks(skipped: list[str] | None = None) -> list[str]:
    """One message per hook that is missing or changed; [] when all are as easyllm expects.

    Hooks of an optional library (TRL, bitsandbytes) that cannot be imported are not problems:
    a line saying so is added to `skipped`, if given.
    """
    problems: list[str] = []
    with warnings.catch_warnings():  # importing trl.experimental warns that it is experimental
        warnings.simplefilter("ignore")
        for library in dict.fromkeys(hook.library for hook in HOOKS):
            hooks = [hook for hook in HOOKS if hook.library == library]
            try:
                version = importlib.metadata.version(library)
                importlib.import_module(library)
            except Exception as error:  # noqa: BLE001 (whatever the reason, easyllm cannot use it)
                if library not in OPTIONAL:
                    problems.append(f"{library} cannot be imported ({error}); easyllm needs it")
                elif skipped is not None:
                    skipped.append(f"{library} not installed, skipped ({len(hooks)} hooks)")
                continue
            problems += [_problem(hook, version, what) for hook in hooks if (what := _change(hook))]
    return problems


if __name__ == "__main__":
    notes: list[str] = []
    found = check_hooks(notes)
    print("\n".join([*found, *notes]) or f"all {len(HOOKS)} hooks are as easyllm expects")
    raise SystemExit(1 if found else 0)
