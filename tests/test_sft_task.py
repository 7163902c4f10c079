"""SFT data preparation: truncation at turn boundaries, and the report that counts what it cost."""

from __future__ import annotations

from easyllm.data.encoding import ChatEncoder
from easyllm.data.truncation import fit_conversation as fit_to_length

SYSTEM = {"role": "system", "content": "Be brief."}


def _exchange(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_truncation_keeps_system_and_latest_turns(tokenizer):
    encoder = ChatEncoder(tokenizer)
    messages = [SYSTEM, *_exchange("word " * 80, "first " * 40), *_exchange("Name?", "Lumen.")]
    budget = len(encoder.encode([SYSTEM, *_exchange("Name?", "Lumen.")]).input_ids)
    fitted = fit_to_length(encoder, messages, budget)
    assert fitted.input_ids == encoder.encode([SYSTEM, *_exchange("Name?", "Lumen.")]).input_ids
    assert "Be brief." in tokenizer.decode(fitted.input_ids)


def test_truncation_cuts_inside_the_last_exchange_only_when_it_must(tokenizer):
    encoder = ChatEncoder(tokenizer)
    messages = [*_exchange("Hi", "word " * 50)]
    fitted = fit_to_length(encoder, messages, 40)
    assert len(fitted.input_ids) == 40 and fitted.trained_tokens > 0
    assert fit_to_length(encoder, [*_exchange("word " * 80, "ok")], 20) is None


def test_report_counts_truncation_and_lost_reply_tokens(tiny_model_dir):
    from easyllm import ModelRunner

    runner = ModelRunner(str(tiny_model_dir))
    long_history = {
        "messages": [SYSTEM, *_exchange("word " * 80, "first " * 40), *_exchange("Name?", "Lumen.")]
    }
    report = runner.load_data([long_history], val_size=0, max_length=60)
    assert (
        report.truncated == 1 and report.truncated_trained_tokens > 0 and report.train_examples == 1
    )
    assert "truncated to max_length: 1 example(s)" in str(report)


def test_report_checks_every_reply_ends_with_its_end_of_turn_token(tiny_model_dir):
    from easyllm import ModelRunner

    runner = ModelRunner(str(tiny_model_dir))
    fine = runner.load_data([{"messages": _exchange("Hi", "Hello there.")}] * 4, val_size=0)
    assert (
        fine.unterminated_replies == 0
        and "every trained reply ends with its end-of-turn token" in str(fine)
    )
    assert set(fine.length_percentiles()) == {"p50", "p90", "p99", "max"}
    cut = runner.load_data([{"messages": _exchange("Hi", "word " * 60)}], val_size=0, max_length=40)
    assert cut.unterminated_replies == 1 and "WARNING: 1 trained repl" in str(cut)
