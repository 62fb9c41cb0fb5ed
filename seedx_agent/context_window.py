"""Which finished turns the model sees, and the KV cache that holds exactly them.

A `Session` keeps one KV cache per variant and appends each turn to it (`session.py`'s module
doc gives the rules). This is the other half: the token budget a turn must fit in, the turns
still in the model's context (the oldest leave first when the budget runs out, and a turn whose
picture the store can no longer give back leaves at once), and rebuilding a cache from the
stored turns exactly as they were written, after a resume, an eviction or a residency swap.
It also takes in turns that ran elsewhere (`adopt_exchange`): a conversation an embedding app
kept itself (LangChain sends the whole history each call) becomes turns the next real turn
prefills, replies included, without generating them again.

`ContextWindow` is a part of `Session` (its base class) and reads the session's state:
``history``, ``runtime``, ``get_image``, ``keep_cache``, ``cache_memory_limit`` and the
``_kv*``, ``_context_start`` and ``_unreadable`` bookkeeping ``Session.__init__`` sets up.
"""

from __future__ import annotations

from typing import Iterator

from .types import Notice


class ContextWindow:
    """The context-window half of `Session` (module doc)."""

    def _embed(self, agent, ids: list[int], encoded: list):
        """Token ids as a tensor, and their embeddings with the images spliced in (or None)."""
        import torch

        tok = self.runtime.tokenizer
        device = agent.llm.get_input_embeddings().weight.device
        input_ids = torch.tensor([ids], device=device)
        if not encoded:
            return input_ids, None
        mask = agent.build_ids_cmp_mask(input_ids, tok.boi_token_id, tok.eoi_token_id,
                                        tok.bop_token_id, tok.eop_token_id)
        with torch.no_grad():
            embeds = agent.embed_inputs(input_ids, torch.cat([e.features for e in encoded]),
                                        torch.cat([e.patch_positions for e in encoded]).to(device),
                                        ids_cmp_mask=mask)
        return input_ids, embeds

    def _token_budget(self, agent) -> int:
        cfg = agent.llm.config
        budget = cfg.max_position_embeddings
        if self.cache_memory_limit is not None:
            param = next(agent.parameters())
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            per_token = (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim
                         + cfg.hidden_size) * param.element_size()
            budget = min(budget, self.cache_memory_limit // per_token)
        return budget

    def _context_turns(self) -> list[int]:
        return [i for i, t in enumerate(self.history) if i >= self._context_start
                and t.context is not None and t.context.in_context and i not in self._unreadable]

    def _drop_unreadable_turns(self) -> Iterator[Notice]:
        """Turns in context whose pictures the store lost leave the context (the cache is
        rebuilt from the pictures, so one lost file would otherwise fail every later turn)."""
        from .store import StoreError

        for i in self._context_turns():
            for image_id in self.history[i].context.image_ids:
                try:
                    self.get_image(image_id)
                except (KeyError, StoreError) as exc:
                    self._unreadable.add(i)
                    yield Notice(message=f"turn {i} left the model's context: "
                                         f"{exc.args[0] if exc.args else exc}; it stays in the "
                                         "transcript")
                    break

    def _evict_oldest(self) -> int:
        turns = self._context_turns()
        dropped = turns[0]
        self._context_start = dropped + 1
        return dropped

    def _kv_session(self, variant, agent, *, fresh: bool):
        """The KV cache of ``variant``, holding exactly the turns in context (rebuilt if not)."""
        if fresh:  # a single-turn variant: every turn is a new conversation
            return self.runtime.new_generation(agent)
        wanted = self._context_turns()
        kv = self._kv.get(variant.name)
        adapter = self.runtime.active_adapter(agent)
        # reused only if it is on the agent now resident: after a residency swap it points at an
        # unloaded copy (decoding there would also keep that copy alive), so it is rebuilt; and
        # only if it was made with the adapter active now (adapter variants share one agent)
        if (self.keep_cache and kv is not None and self._kv_turns.get(variant.name) == wanted
                and getattr(kv, "model", agent) is agent
                and self._kv_adapter.get(variant.name) == adapter):
            return kv
        kv = self.runtime.new_generation(agent)
        self._replay(kv, agent, variant, wanted)
        self._kv[variant.name] = kv
        self._kv_turns[variant.name] = wanted
        self._kv_adapter[variant.name] = adapter
        return kv

    def _replay(self, kv, agent, variant, turns: list[int]) -> None:
        """Prefill finished turns (prompt + reply without EOS), exactly as they were written."""
        rt = self.runtime
        tok = rt.tokenizer
        for n, i in enumerate(turns):
            ctx = self.history[i].context
            encoded = [rt.encode_image(self.get_image(im), im, ctx.grids) for im in ctx.image_ids]
            text = with_images(ctx.instruction, encoded, rt.config.num_img_tokens, ctx.image_first)
            ids = ([tok.bos_token_id] if n == 0 else []) + tok.encode(variant.template.render(text, n == 0))
            input_ids, embeds = self._embed(agent, ids, encoded)
            kv.prefill(input_ids, embeds)
            if ctx.reply_ids:
                kv.prefill(list(ctx.reply_ids))


    # --- turns that ran elsewhere -------------------------------------------------------------
    def adopt_exchange(self, text: str, images: list, reply_ids: list[int],
                       reply_images: list = ()) -> None:
        """Record a finished exchange this session did not run: the user's ``text`` and
        ``images`` (PIL), and the reply as the token ids the model would have written (without
        EOS). Nothing runs now; the next turn rebuilds the KV cache with it (`_replay`), so the
        model reads it exactly as if it had said it. ``reply_images`` (PIL) are the pictures of
        the reply's ``<img>`` runs, kept so a follow-up about them can attach them as it does
        for pictures the session drew; the runs themselves carry no picture the LLM reads."""
        from core_models.image_io import content_hash

        from .store import ModelContext, TurnRecord, TurnRequest
        from .types import ImagePart, TextPart

        variant = self.runtime.variants.get(self.variant)
        parts = []
        for image, role in [(im, "input") for im in images] + [(im, "generated") for im in reply_images]:
            image_id = self.store.put_image(image) if self.store is not None else content_hash(image)
            self._images[image_id] = image
            parts.append(ImagePart(image_id=image_id, width=image.width, height=image.height,
                                   role=role))
        inputs = [p for p in parts if p.role == "input"]
        reply_text = self.runtime.tokenizer.decode(reply_ids)
        record = TurnRecord(
            session_id=self.id, index=len(self.history),
            request=TurnRequest(text=text, image_ids=tuple(p.image_id for p in inputs)),
            parts=(*inputs, TextPart(text=reply_text), *(p for p in parts if p.role != "input")),
            variant=variant.name, reply_tokens=len(reply_ids),
            context=ModelContext(variant=variant.name, instruction=text,
                                 image_ids=tuple(p.image_id for p in inputs),
                                 grids=tuple(variant.resolution_grids),
                                 image_first=variant.template.image_first,
                                 reply_ids=tuple(reply_ids)))
        if self.store is not None:
            record = self.store.append_turn(record)
        self.history.append(record)

    def kept_tokens(self, variant: str | None = None) -> int:
        """How many tokens the KV cache of ``variant`` (default: the session's) holds now, if
        it holds exactly the turns in context; else 0 (the next turn rebuilds it). With
        ``keep_cache=False`` it is the cache the last turn built, which the next one rebuilds."""
        name = variant or self.variant
        kv = self._kv.get(name)
        if kv is None or self._kv_turns.get(name) != self._context_turns():
            return 0
        return len(kv)

    def cache_bytes(self) -> int:
        """An estimate of the memory this session's KV caches hold (keys, values and the
        hidden state per token, as `_token_budget` counts them)."""
        total = 0
        for kv in self._kv.values():
            agent = getattr(kv, "model", None)
            if agent is None or not len(kv):
                continue
            cfg = agent.llm.config
            param = next(agent.parameters())
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            per_token = (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim
                         + cfg.hidden_size) * param.element_size()
            total += per_token * len(kv)
        return total


def with_images(text: str, encoded: list, num_img_tokens: int, image_first: bool) -> str:
    """The instruction: each image's block of placeholder tokens before (or after) the text."""
    from core_models.any_res import image_token_block

    blocks = "".join(image_token_block(e.num_views, num_img_tokens) for e in encoded)
    return blocks + text if image_first else text + blocks
