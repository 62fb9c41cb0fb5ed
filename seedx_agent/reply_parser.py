"""Turn the token ids of one generated SEED-X reply into typed parts, token by token.

SEED-X answers in one interleaved id stream (reference §7, §8)::

    The car is at <box_start><loc-12><loc-40><loc-100><loc-7><box_end> .
    Here is the edited image. <img><img_00000>…<img_00063></img>
    <loc-110><loc-95><loc-60><loc-33><box_end>]]          (pretrained grounding continuation)

The official scripts decode that to a string and run regexes over it. We parse the *ids*
instead, because

* the decoded string differs between transformers 4.30 and 5.x (spaces around added tokens,
  golden_tokenizer/README.md), while the ids do not;
* the runtime needs positions (the hidden states of an image run sit at the 64 rows before its
  ``</img>``), which a string has lost;
* an agent streams: text, boxes and "an image is coming" should reach the user as soon as they
  are known, not after the whole reply.

The parser is a small state machine (text / inside a box / inside an image run). It never
raises on model output: greedy decoding of a fine-tuned model does produce odd streams (cut off
by ``max_new_tokens``, a stray ``<loc-k>``, an image run missing its ``</img>``), and a turn
must still end with parts the user can read. Each oddity becomes a human-readable warning,
collected on the reply and, where it concerns one part, on that part too.

Whitespace. The official 4.30 tokenizer strips whitespace on both sides of every added token
before encoding (reference §13.2), so the model never learned meaningful whitespace next to a
tag: every text run after a tag starts with a bare ``▁`` (``<box_end> ▁ .``). We therefore decode
each maximal run of plain-text ids on its own, strip it at both ends, and when two runs meet
across a tag we join them with one space, unless the left side ends in whitespace or an opening
bracket or the right side starts with closing punctuation. ``The car is at <box> .`` reads
``The car is at.``; ``two dogs: <box> and <box> .`` reads ``two dogs: and.``. Tags never appear in
text. The concatenation of all ``TextDelta`` events is exactly the concatenation of the final
``TextPart`` texts, because the parts are built from the very deltas that were emitted.

This module must not import torch: ``import seedx_agent`` stays cheap.
"""

from __future__ import annotations

import re
from typing import Annotated, Callable, Iterable, Literal, Protocol, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field

from core_models.boxes import LOC_BINS
from seedx_agent.types import (
    SCHEMA_VERSION, BoxFound, BoxPart, ImageStarted, TextDelta, TextPart, _Value,
)

__all__ = [
    "ReplyTokenizer", "ImageSlot", "ParsedReply", "ReplyPart", "ReplyEvent", "ReplyParser",
    "parse_reply", "box_phrase",
]

FinishReason = Literal["eos", "max_new_tokens", "cancelled", "error"]


class ReplyTokenizer(Protocol):
    """The few tokenizer attributes the parser needs (``core_models.tokenizer.SeedXTokenizer``).

    A protocol rather than an import so that this module stays torch-free and can be tested with
    a stub. ``unk_token_id`` is read with ``getattr`` and may be missing.
    """

    bos_token_id: int
    eos_token_id: int
    boi_token_id: int
    eoi_token_id: int
    bop_token_id: int
    eop_token_id: int
    box_start_token_id: int
    box_end_token_id: int

    @property
    def img_token_ids(self) -> Sequence[int]: ...   # 100 ids, <img_00000> first

    @property
    def loc_token_ids(self) -> Sequence[int]: ...   # 224 ids, index = bin

    def decode(self, ids: list[int]) -> str: ...


class ImageSlot(_Value):
    """Where the model generated an image, before the image itself exists.

    The parser only sees ids; the picture is made later from the hidden states of the
    placeholder tokens (rows ``[end - num_tokens, end)`` of the generated sequence, reference
    §7). The runtime replaces each ``complete`` slot by an ``ImagePart`` once it is
    de-tokenised; an incomplete slot (cut off, wrong token count) has no usable features and
    stays a slot so the user is told an image was attempted.
    """

    type: Literal["image_slot"] = "image_slot"
    run_index: int = Field(ge=0)
    complete: bool
    num_tokens: int = Field(0, ge=0)      # placeholder tokens seen inside the run
    start: int = -1                        # position of <img> among the fed ids
    end: int | None = None                 # position of </img>; None if the run never closed
    warnings: tuple[str, ...] = ()


ReplyPart = Annotated[Union[TextPart, BoxPart, ImageSlot], Field(discriminator="type")]
ReplyEvent = Union[TextDelta, BoxFound, ImageStarted]


class ParsedReply(BaseModel):
    """One reply as parts, plus everything that looked wrong in it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: int = SCHEMA_VERSION
    parts: tuple[ReplyPart, ...] = ()
    warnings: tuple[str, ...] = ()
    image_runs: int = 0                    # how many <img> runs were opened (complete or not)
    finish_reason: FinishReason = "eos"

    @property
    def text(self) -> str:
        """All text of the reply, tags removed (equals the concatenated ``TextDelta`` events)."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def boxes(self) -> list[BoxPart]:
        return [p for p in self.parts if isinstance(p, BoxPart)]

    @property
    def image_slots(self) -> list[ImageSlot]:
        return [p for p in self.parts if isinstance(p, ImageSlot)]


# --- box phrases -------------------------------------------------------------------------------

# Words that link a phrase to its box rather than belong to it ("The car is located at <box>").
# Deliberately short: a wrong strip loses a word of a label, a missed one leaves a harmless word.
_CONNECTIVES = {
    "at", "in", "on", "is", "are", "was", "were", "be", "can", "located", "positioned",
    "situated", "found", "shown", "seen", "visible", "here", "there", "and", "or", "as", "by",
}
_TRAILING_JUNK = re.compile(r"[\s,.;:!?\-\u2013\u2014=(\[{<\"'`*]+$")
_LEADING_JUNK = re.compile(r"^[\s,.;:!?\-\u2013\u2014=)\]}>\"'`*]+")
_LAST_WORD = re.compile(r"(?:^|\s)(\w+)$")
_FIRST_WORD = re.compile(r"^(\w+)(?:\s|$)")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")


def box_phrase(text: str) -> str | None:
    """The phrase a box labels, from the text just before its ``<box_start>``.

    SEED-X-I writes boxes right after what they label ("The car is at <box>", "two dogs: <box>").
    Rule, kept simple on purpose: take the last sentence or line of ``text``, then repeatedly
    strip trailing whitespace/punctuation/opening brackets and trailing connective words
    (``_CONNECTIVES``: "is", "at", "located", "and", …), and leading punctuation and a leading
    "and"/"or". Returns None when nothing is left.
    """
    seg = _SENTENCE_END.split(text.strip())[-1]
    while True:
        before = seg
        seg = _TRAILING_JUNK.sub("", seg)
        m = _LAST_WORD.search(seg)
        if m and m.group(1).lower() in _CONNECTIVES:
            seg = seg[:m.start(1)]
        if seg == before:
            break
    while True:
        before = seg
        seg = _LEADING_JUNK.sub("", seg)
        m = _FIRST_WORD.match(seg)
        if m and m.group(1).lower() in ("and", "or"):
            seg = seg[m.end(1):]
        if seg == before:
            break
    return seg or None


# --- the parser ----------------------------------------------------------------------------------

_TEXT, _BOX, _IMAGE = "text", "box", "image"
# token kinds
_K_TEXT, _K_EOS, _K_BOS, _K_UNK = "text", "eos", "bos", "unk"
_K_BOI, _K_EOI, _K_BOP, _K_EOP = "boi", "eoi", "bop", "eop"
_K_IMG, _K_LOC, _K_BOX_START, _K_BOX_END = "img", "loc", "box_start", "box_end"

_OPENING = set("([{\u00bf\u00a1\u201c\u2018\u00ab")
_CLOSING = set(".,;:!?)]}%\u2026\u00bb\u201d\u2019")
_HELD_BACK = re.compile(r"[\s\ufffd]+$")   # trailing whitespace / unfinished UTF-8 bytes


class ReplyParser:
    """Incremental parser for one reply: ``feed`` each generated id, then ``finish``.

    ``open_box=True`` starts the parser inside a box: the SEED-X pretrained grounding prompt
    ends with ``<box_start>`` (reference §6), so its reply is ``<loc>×4<box_end>…`` with no
    opening tag. ``open_box_phrase`` is the phrase that prompt asked about, if known.

    Positions (``ImageSlot.start``/``end``, warnings) count every id fed to this parser, i.e.
    they index the generated ids of the reply.
    """

    def __init__(self, tokenizer: ReplyTokenizer, num_img_tokens: int = 64, *,
                 open_box: bool = False, open_box_phrase: str | None = None) -> None:
        self._tok = tokenizer
        self.num_img_tokens = num_img_tokens
        self._kind: dict[int, str] = {}
        self._img_index: dict[int, int] = {}
        self._loc_bin: dict[int, int] = {}
        for i, tid in enumerate(tokenizer.img_token_ids):
            self._kind[int(tid)] = _K_IMG
            self._img_index[int(tid)] = i
        for b, tid in enumerate(tokenizer.loc_token_ids):
            self._kind[int(tid)] = _K_LOC
            self._loc_bin[int(tid)] = b
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None:
            self._kind[int(unk)] = _K_UNK
        for attr, kind in (("bos_token_id", _K_BOS), ("eos_token_id", _K_EOS),
                           ("boi_token_id", _K_BOI), ("eoi_token_id", _K_EOI),
                           ("bop_token_id", _K_BOP), ("eop_token_id", _K_EOP),
                           ("box_start_token_id", _K_BOX_START),
                           ("box_end_token_id", _K_BOX_END)):
            self._kind[int(getattr(tokenizer, attr))] = kind

        self._pos = -1                      # position of the token being handled
        self._mode = _TEXT
        self._eos_seen = False
        self._after_eos = 0
        self._result: ParsedReply | None = None
        self._parts: list[TextPart | BoxPart | ImageSlot] = []
        self._warnings: list[str] = []
        # current text part and text run
        self._chunks: list[str] = []        # deltas of the TextPart being built
        self._text_warnings: list[str] = []
        self._last_char: str | None = None  # last character of all text emitted so far
        self._run: list[int] = []           # ids of the current run of plain text
        self._run_emitted = ""              # stripped text of that run already emitted
        self._run_held = ""                 # what is held back at the end of the run
        # current box
        self._box_locs: list[int] = []
        self._box_warnings: list[str] = []
        self._box_phrase: str | None = None
        self._box_start = -1
        # current image run
        self._image_runs = 0
        self._img_run = -1
        self._img_count = 0
        self._img_start = -1
        self._img_warnings: list[str] = []
        self._img_disordered = False
        # consecutive ignored tokens of one kind give one warning, not 64
        self._streak: tuple[str, str] | None = None
        self._streak_count = 0
        self._streak_first = -1
        self._streak_message: Callable[[int], str] = str
        self._cur_kind = _K_TEXT

        if open_box:
            self._mode = _BOX
            self._box_phrase = open_box_phrase

    # -- public -----------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once ``</s>`` was fed (later ids are ignored) or ``finish`` was called."""
        return self._eos_seen or self._result is not None

    @property
    def text(self) -> str:
        """The text emitted so far (the concatenation of all ``TextDelta`` events)."""
        done = "".join(p.text for p in self._parts if isinstance(p, TextPart))
        return done + "".join(self._chunks)

    def feed(self, token_id: int) -> list[ReplyEvent]:
        """Consume one generated id; return what became known because of it."""
        if self._result is not None:
            return []
        tid = int(token_id)
        self._pos += 1
        if self._eos_seen:
            self._after_eos += 1
            return []
        kind = self._kind.get(tid, _K_TEXT)
        self._cur_kind = _K_BOP if kind == _K_EOP else kind   # <patch></patch>: one streak
        if self._streak is not None and self._streak != (self._mode, self._cur_kind):
            self._flush_streak()
        events: list[ReplyEvent] = []
        if self._mode == _BOX:
            self._in_box(tid, kind, events)
        elif self._mode == _IMAGE:
            self._in_image(tid, kind, events)
        else:
            self._in_text(tid, kind, events)
        return events

    def feed_many(self, ids: Iterable[int]) -> list[ReplyEvent]:
        events: list[ReplyEvent] = []
        for tid in ids:
            events.extend(self.feed(tid))
        return events

    def finish(self, reason: FinishReason | None = None) -> ParsedReply:
        """Close whatever is open and return the parts. Idempotent.

        ``reason`` defaults to "eos" when ``</s>`` was fed and "max_new_tokens" otherwise. Text
        held back at the end (trailing whitespace, an unfinished multi-byte character) is
        dropped, so no event is lost by not having one to return here.
        """
        if self._result is not None:
            return self._result
        if reason is None:
            reason = "eos" if self._eos_seen else "max_new_tokens"
        self._flush_streak()
        # The caller knows why decoding stopped and its reason is kept; a reason the ids
        # contradict points at a bookkeeping bug upstream, so it is reported, not corrected.
        if reason == "eos" and not self._eos_seen:
            self._warn("finished as 'eos' but no </s> was fed")
        elif reason == "max_new_tokens" and self._eos_seen:
            self._warn(f"finished as 'max_new_tokens' but </s> was fed at token "
                       f"{self._pos - self._after_eos}")
        why = "at </s>" if self._eos_seen else f"when the reply ended ({reason})"
        if self._mode == _BOX:
            self._abandon_box(f"not closed {why}")
        elif self._mode == _IMAGE:
            self._abandon_image(f"cut off {why}")
        else:
            self._end_run()
        if self._after_eos:
            self._warn(f"ignored {self._after_eos} token(s) after </s>")
        self._close_text_part()
        self._result = ParsedReply(parts=tuple(self._parts), warnings=tuple(self._warnings),
                                   image_runs=self._image_runs, finish_reason=reason)
        return self._result

    # -- states -----------------------------------------------------------------------------

    def _in_text(self, tid: int, kind: str, events: list[ReplyEvent]) -> None:
        if kind == _K_TEXT:
            self._text_token(tid, events)
            return
        self._end_run()
        if kind == _K_EOS:
            self._eos_seen = True
        elif kind == _K_BOI:
            self._open_image(events)
        elif kind == _K_BOX_START:
            self._mode = _BOX
            self._box_locs, self._box_warnings, self._box_start = [], [], self._pos
            self._box_phrase = box_phrase("".join(self._chunks))
        elif kind == _K_LOC:
            hint = "; a pretrained grounding continuation needs ReplyParser(open_box=True)"
            self._stray(lambda n: f"ignored {n} <loc-…> token(s) outside a box{hint}")
        elif kind == _K_BOX_END:
            self._stray(lambda n: f"ignored {n} <box_end> without <box_start>")
        elif kind == _K_IMG:
            self._stray(lambda n: f"ignored {n} image placeholder token(s) outside an <img> run")
        elif kind == _K_EOI:
            self._stray(lambda n: f"ignored {n} </img> without <img>")
        elif kind in (_K_BOP, _K_EOP):
            self._stray(lambda n: f"ignored {n} <patch>/</patch> token(s) (input-only tokens)")
        elif kind == _K_BOS:
            self._stray(lambda n: f"ignored {n} <s> (BOS) token(s) in the reply")
        elif kind == _K_UNK:
            self._stray(lambda n: f"ignored {n} <unk> token(s) in the reply")

    def _in_box(self, tid: int, kind: str, events: list[ReplyEvent]) -> None:
        if kind == _K_LOC:
            self._box_locs.append(self._loc_bin[tid])
        elif kind == _K_BOX_END:
            self._close_box(events)
        elif kind == _K_BOX_START:
            phrase = self._box_phrase
            self._abandon_box("restarted by a nested <box_start>")
            self._mode = _BOX
            self._box_locs, self._box_warnings, self._box_start = [], [], self._pos
            self._box_phrase = phrase
        elif kind == _K_BOI:
            self._abandon_box("interrupted by <img>")
            self._open_image(events)
        elif kind == _K_EOS:
            self._eos_seen = True   # reported by finish, which knows the box is still open
        elif kind == _K_TEXT:
            piece = self._safe_decode([tid])
            if piece is None:
                self._warn(f"ignored token {tid} inside a box: the tokenizer cannot decode it",
                           self._box_warnings)
            elif not piece.strip():
                self._warn(f"ignored whitespace token {tid} inside a box", self._box_warnings)
            else:
                self._abandon_box(f"interrupted by text {piece!r}")
                self._text_token(tid, events)
        else:
            self._warn(f"ignored {self._name(tid, kind)} inside a box", self._box_warnings)

    def _in_image(self, tid: int, kind: str, events: list[ReplyEvent]) -> None:
        if kind == _K_IMG:
            if self._img_index[tid] != self._img_count and not self._img_disordered:
                self._img_disordered = True
                self._warn(f"image run {self._img_run}: placeholder {self._name(tid, kind)} at "
                           f"slot {self._img_count} (out of order)", self._img_warnings)
            self._img_count += 1
        elif kind == _K_EOI:
            self._close_image()
        elif kind == _K_EOS:
            self._eos_seen = True   # finish reports the run as cut off
        elif kind in (_K_BOP, _K_EOP, _K_BOS, _K_UNK):
            self._warn(f"ignored {self._name(tid, kind)} inside image run {self._img_run}",
                       self._img_warnings)
        else:
            self._abandon_image(f"interrupted by {self._name(tid, kind)}")
            self._in_text(tid, kind, events)

    # -- text -------------------------------------------------------------------------------

    def _safe_decode(self, ids: list[int]) -> str | None:
        try:
            text = self._tok.decode(ids)
        except Exception:  # noqa: BLE001 - a tokenizer hiccup must not kill the turn
            return None
        return text if isinstance(text, str) else None

    def _text_token(self, tid: int, events: list[ReplyEvent]) -> None:
        self._run.append(tid)
        raw = self._safe_decode(self._run)
        if raw is None:
            self._run.pop()
            self._warn(f"ignored token {tid} at {self._pos}: the tokenizer cannot decode it",
                       self._text_warnings)
            return
        # A run is stripped at both ends (see the module docstring); the end is only held back,
        # since more text may follow. Unfinished byte-fallback characters decode to U+FFFD and
        # are held back too, until their last byte arrives.
        core = raw.lstrip()
        m = _HELD_BACK.search(core)
        self._run_held = m.group(0) if m else ""
        core = core[:m.start()] if m else core
        if len(core) <= len(self._run_emitted) or not core.startswith(self._run_emitted):
            return   # nothing new (or a decode that rewrote its past: never retract text)
        delta = core[len(self._run_emitted):]
        if not self._run_emitted:
            delta = self._separator(delta[0]) + delta
        self._run_emitted = core
        self._chunks.append(delta)
        self._last_char = delta[-1]
        events.append(TextDelta(text=delta))

    def _separator(self, first: str) -> str:
        """What joins a new text run to the text before it across a tag (a space, or nothing)."""
        last = self._last_char
        if last is None or last.isspace() or last in _OPENING or first in _CLOSING:
            return ""
        return " "

    def _end_run(self) -> None:
        if "\ufffd" in self._run_held:
            self._warn(f"dropped an unfinished multi-byte character before token {self._pos}",
                       self._text_warnings)
        self._run, self._run_emitted, self._run_held = [], "", ""

    def _close_text_part(self) -> None:
        if self._chunks:
            self._parts.append(TextPart(text="".join(self._chunks),
                                        warnings=tuple(self._text_warnings)))
        self._chunks, self._text_warnings = [], []

    def _add_part(self, part: BoxPart | ImageSlot) -> None:
        self._close_text_part()
        self._parts.append(part)

    # -- boxes ------------------------------------------------------------------------------

    def _box_where(self) -> str:
        return "the open box" if self._box_start < 0 else f"box at {self._box_start}"

    def _close_box(self, events: list[ReplyEvent]) -> None:
        self._mode = _TEXT
        locs, where = self._box_locs, self._box_where()
        if len(locs) < 4:
            self._warn(f"dropped {where}: {len(locs)} <loc-…> token(s) {locs}, needs 4")
            return
        # A tokenizer may define more <loc-k> than the bins SEED-X measures boxes in; such a
        # box has no meaning on any picture, and BoxPart would refuse it.
        beyond = [b for b in locs[:4] if b >= LOC_BINS]
        if beyond:
            self._warn(f"dropped {where}: <loc-{beyond[0]}> is beyond the {LOC_BINS} bins boxes "
                       f"are measured in, <loc-…> bins {locs}")
            return
        if len(locs) > 4:
            self._warn(f"{where} has {len(locs)} <loc-…> tokens {locs}; kept the first 4",
                       self._box_warnings)
        empty = [side for side, b in (("width", locs[2]), ("height", locs[3])) if b == 0]
        if empty:  # kept, as the model said it, but no picture region can be cut from it
            self._warn(f"{where} has no area ({' and '.join(empty)} bin 0)", self._box_warnings)
        box = BoxPart(bins=tuple(locs[:4]), phrase=self._box_phrase,
                      warnings=tuple(self._box_warnings))
        self._add_part(box)
        events.append(BoxFound(box=box))

    def _abandon_box(self, why: str) -> None:
        self._mode = _TEXT
        self._warn(f"dropped {self._box_where()} ({why}), <loc-…> bins {self._box_locs}")
        self._box_locs, self._box_warnings = [], []

    # -- images -----------------------------------------------------------------------------

    def _open_image(self, events: list[ReplyEvent]) -> None:
        self._mode = _IMAGE
        self._img_run = self._image_runs
        self._image_runs += 1
        self._img_count, self._img_start, self._img_warnings = 0, self._pos, []
        self._img_disordered = False
        events.append(ImageStarted(index=self._img_run))

    def _close_image(self) -> None:
        self._mode = _TEXT
        n, want = self._img_count, self.num_img_tokens
        if n != want:
            self._warn(f"image run {self._img_run} has {n} placeholder tokens, expected {want}; "
                       "it cannot be de-tokenised", self._img_warnings)
        self._add_part(ImageSlot(run_index=self._img_run, complete=n == want, num_tokens=n,
                                 start=self._img_start, end=self._pos,
                                 warnings=tuple(self._img_warnings)))

    def _abandon_image(self, why: str) -> None:
        self._mode = _TEXT
        self._warn(f"image run {self._img_run} {why} after {self._img_count} of "
                   f"{self.num_img_tokens} placeholder tokens; no image", self._img_warnings)
        self._add_part(ImageSlot(run_index=self._img_run, complete=False,
                                 num_tokens=self._img_count, start=self._img_start, end=None,
                                 warnings=tuple(self._img_warnings)))

    # -- warnings ---------------------------------------------------------------------------

    def _warn(self, message: str, target: list[str] | None = None) -> None:
        self._warnings.append(message)
        if target is not None:
            target.append(message)

    def _stray(self, message: Callable[[int], str]) -> None:
        """Note an ignored token; a streak of the same kind becomes one warning with a count."""
        key = (self._mode, self._cur_kind)
        if self._streak != key:
            self._flush_streak()
            self._streak, self._streak_count, self._streak_first = key, 0, self._pos
            self._streak_message = message
        self._streak_count += 1

    def _flush_streak(self) -> None:
        if self._streak is not None and self._streak_count:
            self._warn(f"{self._streak_message(self._streak_count)} (from token "
                       f"{self._streak_first})", self._text_warnings)
        self._streak, self._streak_count = None, 0

    def _name(self, tid: int, kind: str) -> str:
        if kind == _K_LOC:
            return f"<loc-{self._loc_bin[tid]}>"
        if kind == _K_IMG:
            return f"<img_{self._img_index[tid]:05d}>"
        return {_K_EOS: "</s>", _K_BOS: "<s>", _K_UNK: "<unk>", _K_BOI: "<img>",
                _K_EOI: "</img>", _K_BOP: "<patch>", _K_EOP: "</patch>",
                _K_BOX_START: "<box_start>", _K_BOX_END: "<box_end>"}.get(kind, f"token {tid}")


def parse_reply(ids: Iterable[int], tokenizer: ReplyTokenizer, num_img_tokens: int = 64, *,
                open_box: bool = False, open_box_phrase: str | None = None,
                finish_reason: FinishReason | None = None) -> ParsedReply:
    """Parse a whole reply at once: ``feed`` every id, then ``finish``."""
    parser = ReplyParser(tokenizer, num_img_tokens, open_box=open_box,
                         open_box_phrase=open_box_phrase)
    parser.feed_many(ids)
    return parser.finish(finish_reason)
