"""Test kit: replay recorded SEED-X replies through the real agent, no trained model needed.

A skill (or an app) is tested end to end by scripting what the model *says*, token by token,
and letting everything else run for real: the prompt template, the KV-cache bookkeeping, the
reply parser, box placement, the (tiny, random) de-tokenizer, the skills, the store and the
events::

    from seedx_agent.testing import Reply, replay_runtime

    rt = replay_runtime([
        Reply().text("The car is at").box(112, 80, 40, 30).text(".").eos(),
        Reply().text("Here it is:").image(seed=3).eos(),
    ])
    session = rt.open_session()
    done = session.ask("Where is the car?", ["street.jpg"])   # plays the first reply
    done.parts   # TextPart, BoxPart with pixel_xyxy on street.jpg, TextPart

How it works. ``replay_runtime`` swaps the runtime's ``new_generation`` (the one seam between a
session and the LLM) for ``ReplayGeneration``, which keeps the token ids a session prefills
(no LLM runs) and, on each ``stream``, plays the next queued reply: one reply per turn, in
order, across every session on that runtime. The ViT and the input resampler still run on the
prompt's images, so turns behave exactly like real ones, only faster.

A replay goes through the real decode loop (``core_models.generation.decode``) with the
recording as its token source, so it honours what ``GenerationSession.stream`` does:

* ``max_new_tokens``: a longer recording is cut there (``stop_reason="length"``; an image run
  cut open is ``image_truncated``). A recording without ``.eos()`` ends as if the limit had
  been reached right after it.
* ``cancel``: checked before every token, as the real loop does.
* ``force_image``: a recording that does not start with ``<img>`` gets a complete forced image
  run in front of it (what the real logits rule produces), with ``image()``'s default features.
* Every ``</img>`` carries features ``(Q, vit_dim)``: the ones the recording gave, else
  deterministic ones from a seed, so rendered pictures (and their ids) are reproducible.

Malformed recordings (``.tokens("<box_start>", "<loc-3>")``, an image run with too few
placeholders, a run cut by ``max_new_tokens``) are replayed verbatim: that is how the parser's
warnings are tested.

Importing this module does not import torch; building a runtime or replaying does.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, Union

from core_models.boxes import LOC_BINS, valid_bins

if TYPE_CHECKING:
    import torch

    from core_models.generation import GenerationEvent, GenerationResult

    from .runtime import Runtime

__all__ = ["Reply", "ReplayExhausted", "ReplayGeneration", "ReplayQueue", "image_features",
           "replay_runtime", "stop_replay"]

class ReplayExhausted(RuntimeError):
    """A turn asked for a reply but every recorded reply has been played."""


# --- recorded replies --------------------------------------------------------------------------

class Reply:
    """A recorded reply, written the way the model says it. Every method returns the reply.

    * ``text(s)``: plain text, encoded with the runtime's tokenizer (one segment, as generated);
    * ``box(cx, cy, w, h)``: ``<box_start><loc-cx><loc-cy><loc-w><loc-h><box_end>`` (``LOC_BINS`` bins);
    * ``image(features)``: ``<img>`` + the Q placeholders + ``</img>``; ``features`` is a
      ``(Q, vit_dim)`` tensor, an int seed, or None (seed = the run's index in the reply);
    * ``tokens(*items)``: anything verbatim (ids, or token strings such as ``"<loc-7>"``), for
      malformed streams;
    * ``eos()``: ``</s>``, the end of the reply.
    """

    def __init__(self, pieces: Iterable[tuple[str, Any]] = ()):
        self._pieces: list[tuple[str, Any]] = list(pieces)

    def text(self, text: str) -> "Reply":
        if not isinstance(text, str):
            raise TypeError(f"text() takes a str, got {type(text).__name__}")
        self._pieces.append(("text", text))
        return self

    def box(self, cx: int, cy: int, w: int, h: int) -> "Reply":
        bins = (cx, cy, w, h)
        if not valid_bins(bins):
            raise ValueError(f"box bins must be ints in [0, {LOC_BINS}), got {bins}; use "
                             "tokens() to record a malformed box")
        self._pieces.append(("box", bins))
        return self

    def image(self, features: "torch.Tensor | int | None" = None, *, seed: int | None = None) -> "Reply":
        if seed is not None:
            if features is not None:
                raise TypeError("give image() features or a seed, not both")
            features = seed
        self._pieces.append(("image", features))
        return self

    def tokens(self, *items: int | str) -> "Reply":
        for item in items:
            if not isinstance(item, (int, str)):
                raise TypeError(f"tokens() takes ids or token strings, got {type(item).__name__}")
        self._pieces.append(("tokens", items))
        return self

    def eos(self) -> "Reply":
        self._pieces.append(("eos", None))
        return self

    def __add__(self, other: "Reply") -> "Reply":
        return Reply(self._pieces + other._pieces)

    def __repr__(self) -> str:
        shown = []
        for kind, value in self._pieces:
            if kind == "image":
                value = None if value is None or isinstance(value, int) else tuple(value.shape)
            shown.append(f".{kind}({'' if value is None else repr(value)})")
        return "Reply()" + "".join(shown)

    def token_ids(self, tokenizer: Any, num_img_tokens: int = 64) -> list[int]:
        """The recorded ids, with ``tokenizer`` (the runtime's) and Q = ``num_img_tokens``."""
        return self.compile(tokenizer, num_img_tokens)[0]

    def compile(self, tokenizer: Any, num_img_tokens: int = 64) -> tuple[list[int], dict[int, Any]]:
        """``(ids, features)``: the ids and, by image-run index, what ``image()`` said."""
        ids: list[int] = []
        features: dict[int, Any] = {}
        for kind, value in self._pieces:
            if kind == "text":
                ids += tokenizer.encode(value)
            elif kind == "box":
                ids += [tokenizer.box_start_token_id,
                        *(tokenizer.loc_token_ids[b] for b in value), tokenizer.box_end_token_id]
            elif kind == "image":
                run = ids.count(tokenizer.boi_token_id)
                features[run] = run if value is None else value  # None: seeded by the run index
                ids += [tokenizer.boi_token_id, *list(tokenizer.img_token_ids)[:num_img_tokens],
                        tokenizer.eoi_token_id]
            elif kind == "tokens":
                for item in value:
                    ids += [item] if isinstance(item, int) else tokenizer.encode(item)
            else:
                ids.append(tokenizer.eos_token_id)
        return ids, features


def image_features(seed: int, num_img_tokens: int = 64, dim: int = 256) -> "torch.Tensor":
    """Deterministic image features ``(num_img_tokens, dim)`` for ``seed`` (what ``image()``
    uses when it is given a seed or nothing)."""
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(num_img_tokens, dim, generator=generator)


RecordedReply = Union[Reply, Sequence[int]]


def _as_reply(reply: RecordedReply) -> Reply:
    if isinstance(reply, Reply):
        return reply
    ids = list(reply)
    if not all(isinstance(i, int) for i in ids):
        raise TypeError("a recorded reply is a Reply or a sequence of token ids")
    return Reply().tokens(*ids)


class ReplayQueue:
    """The replies still to be played on one runtime (``runtime.replay``), shared by its sessions."""

    def __init__(self, replies: Iterable[RecordedReply] = ()):
        self._pending: deque[Reply] = deque(_as_reply(r) for r in replies)
        self.played: list[Reply] = []
        self._lock = threading.Lock()

    def push(self, *replies: RecordedReply) -> "ReplayQueue":
        """Queue more replies (each plays for one turn, in order)."""
        with self._lock:
            self._pending.extend(_as_reply(r) for r in replies)
        return self

    def __len__(self) -> int:
        return len(self._pending)

    def next(self) -> Reply:
        with self._lock:
            if not self._pending:
                raise ReplayExhausted(
                    f"no recorded reply left: {len(self.played)} were queued and all have been "
                    "played; queue one per turn with runtime.replay.push(Reply()...)")
            reply = self._pending.popleft()
            self.played.append(reply)
            return reply


# --- the replaying decoder -----------------------------------------------------------------------

class ReplayGeneration:
    """Stands in for ``core_models.generation.GenerationSession``: same ``prefill``, ``crop``,
    ``len`` and ``stream``, but the reply comes from ``replies`` instead of the LLM.

    ``prefill`` only records ids (``inputs_embeds`` is shape-checked, then dropped), so the
    cache bookkeeping a session does is observable through ``len`` and ``token_ids``.
    """

    def __init__(self, agent: Any, tokenizer: Any, replies: ReplayQueue):
        self.model = agent  # as GenerationSession.model
        self.tokenizer = tokenizer
        self.replies = replies
        self.token_ids: list[int] = []
        self.hidden_size = _attr(agent, "llm.config.hidden_size", 64)
        self.feature_dim = _attr(agent, "output_resampler.embed_dim", 256)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_cached(self) -> int:
        return len(self.token_ids)

    def reset(self) -> None:
        self.token_ids = []

    def prefill(self, input_ids: Any, inputs_embeds: Any = None) -> None:
        ids = _id_list(input_ids)
        if inputs_embeds is not None and tuple(inputs_embeds.shape[:2]) != (1, len(ids)):
            raise ValueError(f"inputs_embeds {tuple(inputs_embeds.shape)} does not match "
                             f"{len(ids)} input ids (batch 1)")
        self.token_ids.extend(ids)

    def crop(self, num_tokens: int) -> None:
        n = num_tokens if num_tokens >= 0 else len(self.token_ids) + num_tokens
        if not 0 <= n <= len(self.token_ids):
            raise ValueError(f"cannot crop a session of {len(self.token_ids)} tokens to {num_tokens}")
        del self.token_ids[n:]

    def generate(self, max_new_tokens: int = 120, **kwargs: Any) -> "GenerationResult":
        for event in self.stream(max_new_tokens, **kwargs):
            if event.result is not None:
                return event.result
        raise AssertionError("stream ended without a result")

    def stream(self, max_new_tokens: int = 120, *, num_img_gen_tokens: int = 64,
               force_image: bool = False, cancel: Any = None, rollback_on_cancel: bool = False,
               **_sampling: Any) -> Iterator["GenerationEvent"]:
        """Play the next queued reply through the real decode loop, one ``GenerationEvent`` per
        token, then the result.

        Sampling options are accepted and ignored: the recording *is* the choice of tokens.
        """
        from core_models.generation import ImageTokenForcing, decode

        if not self.token_ids:
            raise RuntimeError("empty session: prefill a prompt first")
        tok = self.tokenizer
        reply = self.replies.next()
        ids, specs = reply.compile(tok, num_img_gen_tokens)
        if force_image and ids[:1] != [tok.boi_token_id]:  # what the forcing rule would produce
            ids, specs = (Reply().image() + reply).compile(tok, num_img_gen_tokens)
        rule = ImageTokenForcing.from_tokenizer(tok, num_img_gen_tokens)
        source = _RecordedTokens(ids, specs, tok.boi_token_id, self.hidden_size, self.feature_dim)
        # a recording without EOS ends as if max_new_tokens had been reached right after it
        yield from decode(self, source, rule, min(max_new_tokens, len(ids)), cancel=cancel,
                          rollback_on_cancel=rollback_on_cancel)


class _RecordedTokens:
    """A recording as the decode loop's token source (``core_models.generation.TokenSource``):
    the recorded ids in order, and at each ``</img>`` the features ``image()`` was given."""

    def __init__(self, ids: list[int], specs: dict[int, Any], boi_token_id: int,
                 hidden_size: int, feature_dim: int):
        self.ids, self.specs, self.boi_token_id = ids, specs, boi_token_id
        self.hidden_size, self.feature_dim = hidden_size, feature_dim
        self.runs = -1  # index of the last <img> run opened

    def next_token(self, step: int) -> int:
        token = self.ids[step]
        if token == self.boi_token_id:
            self.runs += 1
        return token

    def image_states(self, index: int, end: int, q: int) -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        spec = self.specs.get(self.runs, self.runs if self.runs >= 0 else index)
        return torch.zeros(q, self.hidden_size), self._features(spec, q)

    def scores(self) -> tuple[None, None]:
        return None, None

    def _features(self, spec: Any, q: int) -> "torch.Tensor":
        if isinstance(spec, int) and not isinstance(spec, bool):
            return image_features(spec, q, self.feature_dim)
        if tuple(spec.shape) != (q, self.feature_dim):
            raise ValueError(f"recorded image features have shape {tuple(spec.shape)}; this "
                             f"runtime needs ({q}, {self.feature_dim})")
        return spec


def replay_runtime(replies: Iterable[RecordedReply] = (), *, runtime: "Runtime | None" = None) -> "Runtime":
    """A runtime whose LLM replays ``replies``, one per turn, in order.

    ``runtime`` defaults to a new tiny preset (``seedx_agent.from_pretrained("tiny")``, a few
    seconds: build it once per test module). A runtime you pass is patched in place; calling
    this again replaces its queue, ``stop_replay`` undoes it. ``runtime.replay`` is the
    ``ReplayQueue`` (``push`` more replies, ``len`` of what is left, ``played``). Replies are
    ``Reply`` objects or plain token-id sequences (for instance a stored turn's
    ``context.reply_ids``, whose EOS was cropped: add ``eos_token_id`` back to end on it). A turn that finds the queue empty fails with an ``ErrorEvent``
    whose message says so (``ReplayExhausted``).
    """
    if runtime is None:
        from .presets import from_pretrained

        runtime = from_pretrained("tiny")
    queue = ReplayQueue(replies)
    tokenizer = runtime.tokenizer

    def new_generation(agent: Any) -> ReplayGeneration:
        return ReplayGeneration(agent, tokenizer, queue)

    runtime.new_generation = new_generation  # instance attribute shadows the method
    runtime.replay = queue
    return runtime


def stop_replay(runtime: "Runtime") -> None:
    """Undo ``replay_runtime``: the runtime's LLM generates again (sessions opened while
    replaying keep their replay caches; open new ones)."""
    runtime.__dict__.pop("new_generation", None)
    runtime.__dict__.pop("replay", None)


# --- helpers -------------------------------------------------------------------------------------

def _attr(obj: Any, dotted: str, default: Any) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return default
    return obj


def _id_list(input_ids: Any) -> list[int]:
    if hasattr(input_ids, "reshape") and hasattr(input_ids, "tolist"):
        if input_ids.dim() == 2 and input_ids.shape[0] != 1:
            raise ValueError("a generation session holds one sequence (batch 1)")
        return [int(i) for i in input_ids.reshape(-1).tolist()]
    return [int(i) for i in input_ids]
