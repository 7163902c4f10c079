"""Token ids of a rendered conversation's pieces, and where each token starts in its text.

Markup keeps its control tokens; content is plain text, so a string such as "<|im_end|>" inside
a message stays text and can never forge a turn. Text between control tokens is tokenized in
one go, as the tokenizer does for the whole text, so clean conversations get exactly
`apply_chat_template`'s ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from .pieces import Piece

_ANCHOR = "\n"  # put before text so that it tokenizes as it would after a control token
# A run of text to tokenize: (where it starts, its text, its control token id or None).
_Segment = tuple[int, str, int | None]


@dataclass
class PieceTokenizer:
    """Tokenizes pieces with one (fast) tokenizer; `special_ids` are its control tokens."""

    tokenizer: PreTrainedTokenizerBase
    special_ids: set[int] = field(init=False)
    _anchor_ids: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.special_ids = set(self.tokenizer.all_special_ids) | {
            token_id
            for token_id, token in self.tokenizer.added_tokens_decoder.items()
            if token.special
        }
        self._anchor_ids = self._find_anchor()

    def tokenize(self, pieces: list[Piece], content_as_text: bool) -> tuple[list[int], list[int]]:
        """Ids of the pieces, and where each token starts in their text.

        Markup is cut at its control tokens; the text between two control tokens (markup and
        content alike) is tokenized as one string with control-token strings kept as text;
        `content_as_text=False` cuts content at its control tokens too.
        Each of the two steps is one batched tokenizer call.
        """
        segments = self._segments(pieces, content_as_text)
        texts = [(start, text) for start, text, special in segments if special is None]
        encoded = iter(
            self._encode_texts([text for _, text in texts], [start > 0 for start, _ in texts])
        )
        ids: list[int] = []
        starts: list[int] = []
        for start, _, special in segments:
            if special is not None:
                ids.append(special)
                starts.append(start)
                continue
            text_ids, offsets = next(encoded)
            ids += text_ids
            starts += [start + offset for offset in offsets]
        return ids, starts

    def _segments(self, pieces: list[Piece], content_as_text: bool) -> list[_Segment]:
        """The pieces' text as control tokens and the runs of plain text between them."""
        as_text = [piece.message is not None and content_as_text for piece in pieces]
        cuts = iter(self._split_markup([p.text for p, text in zip(pieces, as_text) if not text]))
        segments: list[_Segment] = []
        position = 0
        for piece, text_only in zip(pieces, as_text):
            for text, special in [(piece.text, None)] if text_only else next(cuts):
                if special is None and segments and segments[-1][2] is None:
                    start, previous, _ = segments[-1]
                    segments[-1] = (start, previous + text, None)
                else:
                    segments.append((position, text, special))
                position += len(text)
        return segments

    def _split_markup(self, texts: list[str]) -> list[list[tuple[str, int | None]]]:
        """Each markup cut into plain text and control tokens, where the tokenizer finds them."""
        if not texts:
            return []
        batch = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        cuts = []
        for text, ids, offsets in zip(texts, batch["input_ids"], batch["offset_mapping"]):
            parts: list[tuple[str, int | None]] = []
            position = 0
            for token, (start, end) in zip(ids, offsets):
                if token in self.special_ids:  # its span includes any whitespace it strips
                    if start > position:
                        parts.append((text[position:start], None))
                    parts.append((text[start:end], token))
                    position = end
            if position < len(text):
                parts.append((text[position:], None))
            cuts.append(parts)
        return cuts

    def _encode_texts(
        self, texts: list[str], after_control: list[bool]
    ) -> list[tuple[list[int], list[int]]]:
        """Plain-text ids of each text (control-token strings stay text), where each starts."""
        if not texts:
            return []
        anchors = [_ANCHOR if after and self._anchor_ids else "" for after in after_control]
        batch = self.tokenizer(
            [anchor + text for anchor, text in zip(anchors, texts)],
            add_special_tokens=False,
            split_special_tokens=True,
            return_offsets_mapping=True,
        )
        results = []
        rows = zip(texts, anchors, batch["input_ids"], batch["offset_mapping"])
        for text, anchor, ids, offsets in rows:
            skip = len(self._anchor_ids) if anchor else 0
            # The anchor merged with the text: go without.
            if anchor and ids[:skip] != self._anchor_ids:
                results += self._encode_texts([text], [False])
                continue
            results.append(
                (ids[skip:], [max(start - len(anchor), 0) for start, _ in offsets[skip:]])
            )
        return results

    def _find_anchor(self) -> list[int]:
        """Ids of `_ANCHOR` when text after a control token must be tokenized behind it, else [].

        Sentencepiece-style tokenizers (Metaspace, prepend_scheme="first") put "▁" before a
        string's first word but not after a control token; tokenized alone, every piece after
        one would gain a space. Behind a newline whose tokens are then dropped, it does not.
        """
        control = self.tokenizer.eos_token or next(iter(self.tokenizer.all_special_tokens), None)
        if control is None:
            return []
        probe = "Hi there"
        after = self.tokenizer(control + probe, add_special_tokens=False)["input_ids"]
        alone = self._plain_ids(probe)
        if after[:1] != [self.tokenizer.convert_tokens_to_ids(control)] or after[1:] == alone:
            return []
        anchor_ids = self._plain_ids(_ANCHOR)
        behind = self._plain_ids(_ANCHOR + probe)
        return anchor_ids if behind == anchor_ids + after[1:] else []

    def _plain_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)
        return ids["input_ids"]
