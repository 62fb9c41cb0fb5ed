"""Step-wise SEED-X generation over an explicit, caller-owned KV cache.

Official counterpart: ``ContinuousLVLM.generate`` + ``AutoImageTokenGenerationProcessor``
(``src/models/mllm/seed_x.py``, ``generation.py``), which run HF ``generate`` once per request and
recompute everything. A chat runtime needs more: multi-turn sessions that only prefill each
turn's new tokens, rollback of a cancelled or unwanted turn, cancellation between steps, streamed
text, and image features as soon as an image run closes. So the loop is written out here:

* ``GenerationSession`` owns a ``transformers.DynamicCache``, the token ids it covers and the
  post-final-norm hidden state of every cached position (about 1% of the KV cache; it makes
  ``crop`` exact and free and gives the image features without ``output_hidden_states``).
  ``prefill`` appends tokens (optionally with spliced ``inputs_embeds``), ``crop`` rolls back,
  ``stream`` decodes step by step and yields one ``GenerationEvent`` per token.
* ``ImageTokenForcing`` is the official logits rule: after ``<img>`` force ``<img_00000>`` ..
  ``<img_{Q-1}>`` then ``</img>`` (score = max + 10); elsewhere set the scores of those Q tokens
  and ``</img>`` to **0.0** (not -inf; ``suppress_with_neg_inf=True`` is the safer option).
* ``generate`` reproduces the official one-shot call (greedy by default) on top of a session.
* ``decode`` is the one decode loop (limits, cancellation, image runs, text deltas, boxes, the
  result). It asks a ``TokenSource`` for each token and for the features of each closed image:
  the session's source reads the LLM's logits, the replay kit (``seedx_agent.testing``) a
  recording, so a replayed turn goes through exactly the loop a generated one does.

The last sampled token is kept *pending*: it is in ``token_ids`` but only fed to the model when
the next step (or the next ``prefill``) needs its logits, exactly like HF ``generate``, which
never runs the final token. ``crop(-1)`` after a turn that ended on EOS therefore costs nothing.

A runtime drives a multi-turn session like this::

    session = GenerationSession(model, tokenizer)
    embeds = model.embed_inputs(ids1, image_embeds, patch_positions, ids_cmp_mask)
    session.prefill(ids1, embeds)                 # turn 1: the whole prompt
    for event in session.stream(max_new_tokens=512, cancel=stop_event):
        send(event.text); ...                     # event.image on </img>, event.result at the end
    session.crop(-1)                              # drop the EOS (SEED-X multi-turn format)
    session.prefill(ids2)                         # turn 2: only "\\n[INST] ... [/INST]\\n"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torch import nn
from transformers import DynamicCache

from .boxes import Box, parse_boxes
from .cancel import CancelCheck, is_cancelled


class AgentLike(Protocol):
    """What generation needs from the agent (``mllm.ContinuousLVLM`` provides it).

    Spelled out here rather than imported, so that the model may offer the official
    ``ContinuousLVLM.generate`` on top of this module without the two importing each other.
    """

    llm: Any                      # transformers LlamaForCausalLM
    output_resampler: nn.Module
    add_patch_pos: bool

    def decoder(self) -> nn.Module: ...

    def lm_head(self, hidden_states: torch.Tensor) -> torch.Tensor: ...

    def embed_inputs(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None,
                     patch_positions: torch.Tensor | None = None,
                     ids_cmp_mask: torch.Tensor | None = None,
                     embeds_cmp_mask: torch.Tensor | None = None) -> torch.Tensor: ...


class TokenizerLike(Protocol):
    """What generation needs from a tokenizer (``SeedXTokenizer`` provides it).

    ``decode`` must keep special and added tokens in the text (upstream decodes with
    ``skip_special_tokens=False``); ``img_token_ids`` are ``<img_00000>``, ``<img_00001>``, ...
    """

    eos_token_id: int
    boi_token_id: int
    eoi_token_id: int
    img_token_ids: Sequence[int]
    box_start_token_id: int
    box_end_token_id: int

    def decode(self, ids: Sequence[int]) -> str: ...


# ----------------------------------------------------------------------------------------------
# the official logits rule
# ----------------------------------------------------------------------------------------------
class ImageTokenForcing:
    """``AutoImageTokenGenerationProcessor``: force complete image runs, keep image tokens out of text.

    ``chain = [<img>, <img_00000>, ..., <img_{Q-1}>, </img>]``. If the last token is in
    ``chain[:-1]``, the next chain element is forced; otherwise the scores of ``chain[1:]`` are set
    to 0.0 (``<img>`` is left alone: the model decides when to start an image). Because 0.0 is an
    assignment, not a mask, a model whose logits are all negative can still emit them; that is
    the faithful default. Unlike upstream, scores are never edited in place.
    """

    def __init__(self, boi_token_id: int, img_token_ids: Sequence[int], eoi_token_id: int,
                 suppress_with_neg_inf: bool = False):
        self.chain = [int(boi_token_id), *map(int, img_token_ids), int(eoi_token_id)]
        self._next = {t: self.chain[i + 1] for i, t in enumerate(self.chain[:-1])}
        self._suppressed = torch.tensor(self.chain[1:], dtype=torch.long)
        self.suppress_with_neg_inf = suppress_with_neg_inf

    @classmethod
    def from_tokenizer(cls, tokenizer: TokenizerLike, num_img_gen_tokens: int = 64,
                       suppress_with_neg_inf: bool = False) -> "ImageTokenForcing":
        img_ids = list(tokenizer.img_token_ids)[:num_img_gen_tokens]
        if len(img_ids) != num_img_gen_tokens:
            raise ValueError(f"tokenizer has {len(img_ids)} image tokens, need {num_img_gen_tokens}")
        return cls(tokenizer.boi_token_id, img_ids, tokenizer.eoi_token_id, suppress_with_neg_inf)

    @property
    def boi_token_id(self) -> int:
        return self.chain[0]

    @property
    def eoi_token_id(self) -> int:
        return self.chain[-1]

    @property
    def num_img_tokens(self) -> int:
        return len(self.chain) - 2

    def forced_token(self, last_token_id: int) -> int | None:
        """The token the rule forces after ``last_token_id``, or None outside an image run."""
        return self._next.get(int(last_token_id))

    def run_position(self, last_token_id: int) -> int | None:
        """How many image tokens of the open run are produced (0 right after ``<img>``), or None."""
        if int(last_token_id) not in self._next:
            return None
        return self.chain.index(int(last_token_id))

    def process(self, last_token_id: int, scores: torch.Tensor) -> torch.Tensor:
        """Processed copy of ``scores`` (``(V,)`` or ``(..., V)``) given the previous token."""
        scores = scores.clone()
        forced = self.forced_token(last_token_id)
        if forced is not None:
            scores[..., forced] = scores.max() + 10.0
        else:
            scores[..., self._suppressed.to(scores.device)] = (
                float("-inf") if self.suppress_with_neg_inf else 0.0)
        return scores

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """HF ``LogitsProcessor`` signature (``(B, S)`` ids, ``(B, V)`` scores), row by row."""
        return torch.stack([self.process(int(ids[-1]), row) for ids, row in zip(input_ids, scores)])


# ----------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------
@dataclass
class GeneratedImage:
    """One ``</img>``: the hidden states at the inputs of the Q tokens before it, and their features."""

    index: int              # 0-based among this turn's images
    eoi_index: int          # position of </img> in generated_ids
    hidden_states: torch.Tensor  # (Q, hidden), post-final-norm
    features: torch.Tensor       # (Q, vit_dim) = output_resampler(hidden_states): de-tokenizer input
    well_formed: bool       # the Q inputs really were <img_00000>..<img_{Q-1}>


@dataclass
class GenerationResult:
    generated_ids: list[int]
    text: str               # generated text: Q placeholders of each image and <img> removed, </img> kept
    stop_reason: str        # "eos" | "length" | "cancelled"
    images: list[GeneratedImage] = field(default_factory=list)
    image_truncated: bool = False  # max_new_tokens / cancel ended generation inside an image run
    boxes: list[Box] = field(default_factory=list)
    start_length: int = 0   # session length before this turn's generation: crop(start_length) undoes it
    raw_logits: torch.Tensor | None = None        # (N, V) float32, when record_logits=True
    processed_scores: torch.Tensor | None = None  # (N, V) after ImageTokenForcing

    @property
    def has_img_output(self) -> bool:
        return bool(self.images)

    @property
    def num_gen_imgs(self) -> int:
        return len(self.images)

    @property
    def img_gen_feat(self) -> torch.Tensor | None:
        return torch.stack([im.features for im in self.images]) if self.images else None

    @property
    def img_gen_hidden_states(self) -> torch.Tensor | None:
        return torch.stack([im.hidden_states for im in self.images]) if self.images else None

    def to_official(self) -> dict:
        """The dict the official ``ContinuousLVLM.generate`` returns."""
        return {"text": self.text, "has_img_output": self.has_img_output,
                "img_gen_feat": self.img_gen_feat, "num_gen_imgs": self.num_gen_imgs}


@dataclass
class GenerationEvent:
    """One decoding step (``token_id`` set) or the final event (``result`` set).

    Applying every event's ``text`` in order (append, or replace everything shown so far when
    ``replace_text``) yields exactly ``result.text``.
    """

    step: int
    token_id: int | None
    text: str = ""
    replace_text: bool = False
    image_progress: tuple[int, int] | None = None  # (tokens produced, Q) while an image run is open
    image: GeneratedImage | None = None            # set on the step that produced </img>
    result: GenerationResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None


# ----------------------------------------------------------------------------------------------
# the session
# ----------------------------------------------------------------------------------------------
class GenerationSession:
    """Batch-1 decoding state: a ``DynamicCache``, the ids it covers, post-norm hidden states.

    Invariant: ``token_ids[:num_cached]`` are in the cache (and in ``hidden_states``); the rest
    (at most the last generated token, or ids cropped back in) are pending and are fed, with their
    token embeddings, by the next call that needs logits. One session serves one conversation
    from one thread at a time; ``cancel`` is the only thing meant to be touched from outside.
    """

    def __init__(self, model: AgentLike, tokenizer: TokenizerLike):
        self.model = model
        self.tokenizer = tokenizer
        self.reset()

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.model.llm.config)
        self.token_ids: list[int] = []
        self._hidden: torch.Tensor | None = None  # (1, num_cached, hidden)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_cached(self) -> int:
        return 0 if self._hidden is None else self._hidden.shape[1]

    @property
    def hidden_states(self) -> torch.Tensor | None:
        """``(1, num_cached, hidden)`` post-final-norm states, one per cached input position."""
        return self._hidden

    # --- cache management ---------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor | Sequence[int],
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``input_ids`` (``(1, S)``, ``(S,)`` or a list) and run them through the LLM.

        ``inputs_embeds`` ``(1, S, hidden)`` carries spliced image features
        (``ContinuousLVLM.embed_inputs``); without it the token embeddings are used. A pending
        token is fed first. Returns the float32 logits ``(V,)`` for the next token.
        """
        ids = _id_list(input_ids)
        embed = self.model.llm.get_input_embeddings()
        device = embed.weight.device
        if inputs_embeds is None:
            new = embed(torch.tensor([ids], device=device)) if ids else None
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[:2] != (1, len(ids)):
                raise ValueError(f"inputs_embeds {tuple(inputs_embeds.shape)} does not match "
                                 f"{len(ids)} input ids (batch 1)")
            new = inputs_embeds.to(device=device, dtype=embed.weight.dtype)
        pending = self.token_ids[self.num_cached:]
        self.token_ids.extend(ids)
        parts = ([embed(torch.tensor([pending], device=device))] if pending else []) + (
            [new] if new is not None else [])
        if parts:
            self._forward(torch.cat(parts, dim=1))
        return self.next_token_logits()

    def crop(self, num_tokens: int) -> None:
        """Keep the first ``num_tokens`` tokens (negative: drop that many from the end).

        Exact and cheap: the cache and the hidden states are sliced, nothing is recomputed. Use
        ``crop(-1)`` to drop a turn's EOS, ``crop(len_before_turn)`` to undo a turn.
        """
        n = num_tokens if num_tokens >= 0 else len(self.token_ids) + num_tokens
        if not 0 <= n <= len(self.token_ids):
            raise ValueError(f"cannot crop a session of {len(self.token_ids)} tokens to {num_tokens}")
        if n == 0:
            self.reset()
            return
        del self.token_ids[n:]
        excess = self.num_cached - n
        if excess > 0:
            self.cache.crop(-excess)
            self._hidden = self._hidden[:, :n]

    def clone(self) -> "GenerationSession":
        """Independent copy (copies the KV cache: memory, not compute). For rollback prefer crop."""
        other = GenerationSession.__new__(GenerationSession)
        other.model, other.tokenizer = self.model, self.tokenizer
        layers = [(k, v) for k, v, _ in self.cache] if self.num_cached else None
        other.cache = DynamicCache(layers, config=self.model.llm.config)
        other.token_ids = list(self.token_ids)
        other._hidden = None if self._hidden is None else self._hidden.clone()
        return other

    @torch.no_grad()
    def next_token_logits(self) -> torch.Tensor:
        """Float32 logits ``(V,)`` after the last token (feeds a pending token if there is one)."""
        pending = self.token_ids[self.num_cached:]
        if pending:
            embed = self.model.llm.get_input_embeddings()
            self._forward(embed(torch.tensor([pending], device=embed.weight.device)))
        if self._hidden is None:
            raise RuntimeError("empty session: prefill a prompt first")
        return self.model.lm_head(self._hidden[:, -1])[0].float()

    def _forward(self, inputs_embeds: torch.Tensor) -> None:
        start = self.num_cached
        positions = torch.arange(start, start + inputs_embeds.shape[1], device=inputs_embeds.device)
        hidden = self.model.decoder()(inputs_embeds=inputs_embeds, position_ids=positions.unsqueeze(0),
                                      cache=self.cache, use_cache=True).last_hidden_state
        self._hidden = hidden if self._hidden is None else torch.cat([self._hidden, hidden], dim=1)

    # --- decoding -------------------------------------------------------------------------------
    def stream(self, max_new_tokens: int = 120, *, num_img_gen_tokens: int = 64,
               force_image: bool = False, do_sample: bool = False, temperature: float = 0.7,
               top_p: float = 0.5, generator: torch.Generator | None = None,
               suppress_with_neg_inf: bool = False, cancel: CancelCheck = None,
               rollback_on_cancel: bool = False, record_logits: bool = False,
               ) -> Iterator[GenerationEvent]:
        """Decode up to ``max_new_tokens`` tokens after the session's last token, one event per step.

        Greedy unless ``do_sample`` (then temperature, then top-p, as HF's warpers, drawing from
        ``generator``). Forced image tokens are taken directly (greedy would pick them anyway:
        max + 10). ``force_image`` makes ``<img>`` the first token, like appending it to the
        prompt (SEED-X-I's "force image generation"). ``cancel`` is checked before each step; a
        cancelled turn keeps its tokens unless ``rollback_on_cancel``. Stops after EOS (which stays
        pending, see the module doc). The last event carries the ``GenerationResult``.
        """
        rule = ImageTokenForcing.from_tokenizer(self.tokenizer, num_img_gen_tokens, suppress_with_neg_inf)
        source = _ModelTokens(self, rule, force_image=force_image, do_sample=do_sample,
                              temperature=temperature, top_p=top_p, generator=generator,
                              record_logits=record_logits)
        yield from decode(self, source, rule, max_new_tokens, cancel=cancel,
                          rollback_on_cancel=rollback_on_cancel)

    def generate(self, max_new_tokens: int = 120, **kwargs) -> GenerationResult:
        """Run ``stream`` to the end and return its result."""
        for event in self.stream(max_new_tokens, **kwargs):
            if event.result is not None:
                return event.result
        raise AssertionError("stream ended without a result")


class _ModelTokens:
    """The LLM's tokens: logits after the session's last token, the forcing rule, greedy or sampled.

    Image features are the output resampler over the post-norm hidden states the session caches,
    so closing an image costs no extra forward pass.
    """

    def __init__(self, session: GenerationSession, rule: ImageTokenForcing, *, force_image: bool,
                 do_sample: bool, temperature: float, top_p: float,
                 generator: torch.Generator | None, record_logits: bool):
        self.session, self.rule = session, rule
        self.force_image, self.record_logits = force_image, record_logits
        self.sampling = (do_sample, temperature, top_p, generator)
        self.raw: list[torch.Tensor] = []
        self.processed: list[torch.Tensor] = []

    def next_token(self, step: int) -> int:
        logits = self.session.next_token_logits()
        last = self.session.token_ids[-1]
        forced = self.rule.forced_token(last)
        if forced is None and self.force_image and step == 0:
            forced = self.rule.boi_token_id
        if self.record_logits:
            self.raw.append(logits)
            self.processed.append(self.rule.process(last, logits))
        if forced is not None:
            return forced
        scores = self.processed[-1] if self.record_logits else self.rule.process(last, logits)
        return _choose(scores, *self.sampling)

    @torch.no_grad()
    def image_states(self, index: int, end: int, q: int) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.session.hidden_states[0, end - q:end]
        resampler = self.session.model.output_resampler
        return hidden, resampler(hidden.unsqueeze(0).to(resampler.query.dtype))[0]

    def scores(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return (torch.stack(self.raw) if self.raw else None,
                torch.stack(self.processed) if self.processed else None)


# ----------------------------------------------------------------------------------------------
# the decode loop
# ----------------------------------------------------------------------------------------------
class TokenSource(Protocol):
    """Where `decode` gets each token and each closed image's states from.

    The session's source asks the LLM; the replay kit's plays a recording. Everything else about
    a turn belongs to the loop, so both behave the same by construction.
    """

    def next_token(self, step: int) -> int:
        """Token ``step`` of this turn (0-based), after the session's current last token."""

    def image_states(self, index: int, end: int, q: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden_states (Q, hidden), features (Q, vit_dim))`` of image ``index`` of the turn,
        whose ``</img>`` sits at session position ``end`` (its Q inputs are ``[end-Q, end)``)."""

    def scores(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(raw_logits, processed_scores)`` recorded for the result, if any."""


class DecodingState(Protocol):
    """The part of a session the loop updates: its token ids, its tokenizer, rollback."""

    token_ids: list[int]
    tokenizer: TokenizerLike

    def crop(self, num_tokens: int) -> None: ...


def decode(session: DecodingState, source: TokenSource, rule: ImageTokenForcing,
           max_new_tokens: int, *, cancel: CancelCheck = None,
           rollback_on_cancel: bool = False) -> Iterator[GenerationEvent]:
    """The decode loop of one turn: up to ``max_new_tokens`` tokens from ``source``, appended to
    ``session.token_ids``, one `GenerationEvent` each, then the event carrying the result.

    ``cancel`` is checked before every token; the turn stops after EOS (stop reasons ``"eos"``,
    ``"length"``, ``"cancelled"``). On ``</img>`` the image closes with the source's states (when
    Q positions precede it); text deltas hide ``<img>`` and each run's Q placeholders, and an
    image run still open when the turn ends is ``image_truncated``.
    """
    if not session.token_ids:
        raise RuntimeError("empty session: prefill a prompt first")
    tok = session.tokenizer
    q = rule.num_img_tokens
    start = len(session.token_ids)
    box_open = _box_open(session.token_ids, tok.box_start_token_id, tok.box_end_token_id)
    generated: list[int] = []
    images: list[GeneratedImage] = []
    text = _IncrementalText(tok.decode)
    stop_reason = "length"

    for step in range(max_new_tokens):
        if is_cancelled(cancel):
            stop_reason = "cancelled"
            break
        token = source.next_token(step)
        session.token_ids.append(token)  # pending until the next step needs its logits
        generated.append(token)

        image = None
        if token == rule.eoi_token_id:
            image = _close_image(session, source, rule, len(images), len(generated) - 1)
            if image is not None:
                images.append(image)
        run = rule.run_position(token)
        delta, replace = text.update(_visible_ids(generated, rule, images, open_run=True))
        yield GenerationEvent(step=step, token_id=token, text=delta, replace_text=replace,
                              image_progress=None if run is None else (run, q), image=image)
        if token == tok.eos_token_id:
            stop_reason = "eos"
            break

    truncated = stop_reason != "eos" and bool(generated) and rule.run_position(generated[-1]) is not None
    delta, replace = text.update(_visible_ids(generated, rule, images, open_run=False), final=True)
    raw_logits, processed_scores = source.scores()
    result = GenerationResult(
        generated_ids=generated, text=text.emitted, stop_reason=stop_reason, images=images,
        image_truncated=truncated, boxes=parse_boxes(text.emitted, open_box=box_open),
        start_length=start, raw_logits=raw_logits, processed_scores=processed_scores)
    if stop_reason == "cancelled" and rollback_on_cancel:
        session.crop(start)
    yield GenerationEvent(step=len(generated), token_id=None, text=delta, replace_text=replace,
                          result=result)


def _close_image(session: DecodingState, source: TokenSource, rule: ImageTokenForcing,
                 index: int, eoi_index: int) -> GeneratedImage | None:
    """The image whose ``</img>`` was just appended: the Q positions before it.

    Upstream slices rows ``[e-Q, e)`` of the generated-token hidden states for *every*
    ``</img>``; here the window may reach back into the prompt (a run that started there).
    """
    q = rule.num_img_tokens
    end = len(session.token_ids) - 1  # session position of </img>
    if end < q:
        return None
    hidden, features = source.image_states(index, end, q)
    well_formed = session.token_ids[end - q:end] == rule.chain[1:-1]
    return GeneratedImage(index=index, eoi_index=eoi_index, hidden_states=hidden,
                          features=features, well_formed=well_formed)


# ----------------------------------------------------------------------------------------------
# official one-shot generate
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model: AgentLike, tokenizer: TokenizerLike, input_ids: torch.Tensor | Sequence[int],
             image_embeds: torch.Tensor | None = None, embeds_cmp_mask: torch.Tensor | None = None,
             ids_cmp_mask: torch.Tensor | None = None, patch_positions: torch.Tensor | None = None,
             *, max_new_tokens: int = 120, num_img_gen_tokens: int = 64, **stream_kwargs) -> GenerationResult:
    """``ContinuousLVLM.generate``: splice the images, prefill, decode (greedy by default).

    Same inputs and semantics as upstream (batch 1; ``result.to_official()`` is its return dict);
    ``stream_kwargs`` go to ``GenerationSession.stream`` (``record_logits=True`` keeps the raw and
    processed scores of every step).
    """
    ids = torch.as_tensor(input_ids).reshape(1, -1)
    if image_embeds is not None:
        if embeds_cmp_mask is None or ids_cmp_mask is None:
            raise ValueError("image_embeds needs embeds_cmp_mask and ids_cmp_mask (as upstream)")
        if model.add_patch_pos and patch_positions is None:
            raise ValueError("this model adds patch positions: pass patch_positions (V, 2)")
    device = model.llm.get_input_embeddings().weight.device
    ids = ids.to(device)
    embeds = model.embed_inputs(ids, image_embeds, patch_positions,
                                None if ids_cmp_mask is None else ids_cmp_mask.reshape(1, -1).to(device),
                                embeds_cmp_mask)
    session = GenerationSession(model, tokenizer)
    session.prefill(ids, embeds)
    return session.generate(max_new_tokens, num_img_gen_tokens=num_img_gen_tokens, **stream_kwargs)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _visible_ids(generated: list[int], rule: ImageTokenForcing, images: list[GeneratedImage],
                 open_run: bool) -> list[int]:
    """Upstream's text mask: drop every ``<img>`` and the Q positions before each ``</img>``.

    While streaming (``open_run``), the tokens of a still-open run are hidden too: they vanish
    if it closes. If generation ends inside the run they stay in the text, as upstream.
    """
    hide = [tok == rule.boi_token_id for tok in generated]
    q = rule.num_img_tokens
    for image in images:
        for i in range(max(0, image.eoi_index - q), image.eoi_index):
            hide[i] = True
    if open_run and generated:
        done = rule.run_position(generated[-1])
        if done:
            for i in range(max(0, len(generated) - done), len(generated)):
                hide[i] = True
    return [tok for tok, h in zip(generated, hide) if not h]


class _IncrementalText:
    """Turn successive decodes into deltas whose concatenation is the final decode.

    A trailing U+FFFD (a multi-byte character still incomplete) is held back; if the decoder ever
    rewrites already-emitted text, the full text is sent with ``replace=True``.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self.decode = decode
        self.emitted = ""
        self._last_ids: list[int] | None = None

    def update(self, ids: list[int], final: bool = False) -> tuple[str, bool]:
        if ids == self._last_ids and not final:
            return "", False
        self._last_ids = list(ids)
        text = self.decode(ids) if ids else ""
        if not final:
            text = text.rstrip("\ufffd")
        if text.startswith(self.emitted):
            delta, self.emitted = text[len(self.emitted):], text
            return delta, False
        self.emitted = text
        return text, True


def _choose(scores: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
            generator: torch.Generator | None) -> int:
    if not do_sample or temperature == 0:
        return int(scores.argmax())
    logits = scores.float() / temperature
    if top_p < 1.0:  # HF TopPLogitsWarper: drop the low tail whose mass is <= 1 - top_p
        sorted_logits, order = torch.sort(logits)
        drop_sorted = sorted_logits.softmax(-1).cumsum(-1) <= (1 - top_p)
        drop_sorted[-1] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    if generator is not None:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


def _box_open(token_ids: list[int], box_start: int, box_end: int) -> bool:
    for tok in reversed(token_ids):
        if tok == box_end:
            return False
        if tok == box_start:
            return True
    return False


def _id_list(input_ids: torch.Tensor | Sequence[int]) -> list[int]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2 and input_ids.shape[0] != 1:
            raise ValueError("a GenerationSession holds one sequence (batch 1)")
        return input_ids.reshape(-1).tolist()
    return [int(t) for t in input_ids]
