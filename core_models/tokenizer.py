"""``SeedXTokenizer``: the SEED-X tokenizer exactly as the official code runs it.

The official code loads ``cvlm_llama2_tokenizer_100img_and_224loc_addpatch/`` with the *slow*,
SentencePiece-based ``LlamaTokenizer`` of transformers 4.30.2, and the released models were
trained and evaluated with the ids that class produces. transformers 5.x reads the same four files
into a different pipeline and silently returns different ids (a stray ``▁`` before ``<patch>``,
no ``▁`` after ``</img>``, ...; reference §13.2). So this file does not use transformers at all:
it transcribes the 4.30.2 algorithm on top of the ``sentencepiece`` package, which is the part
that never changed ("Recipe D" of ``tests/fixtures/golden_tokenizer/README.md``).

encode(text)  = 4.30.2 ``PreTrainedTokenizer.tokenize`` + ``LlamaTokenizer._tokenize``:
  1. cut the text at every added token (``<img>``, ``<loc-7>``, ...) and at ``<s>``/``</s>``/``<unk>``;
  2. strip whitespace (Python ``str.strip`` semantics: newlines and NBSP too) on both sides of
     every *added* token; ``<s>``/``</s>``/``<unk>`` are AddedTokens with lstrip/rstrip false and
     keep their neighbours' whitespace;
  3. encode each remaining non-empty text chunk *on its own* with SentencePiece, so every chunk
     gets its own dummy-prefix ``▁``, and splice the token ids in between.

decode(ids)   = 4.30.2 ``PreTrainedTokenizer._decode`` + ``LlamaTokenizer.convert_tokens_to_string``:
  1. cut the ids at added ids; each added token is a sub-text of its own;
  2. each maximal run of other ids is one sub-text, decoded by SentencePiece (which drops the
     run's leading ``▁``) and further split at ``<s>``/``</s>``/``<unk>``, with the 4.30.2 quirk:
     such a token after text puts a space at the *start* of that text (``" Hello</s>"``);
  3. join the sub-texts with single spaces (``"at <box_start> <loc-12> ..."``).

SEED-X never lets the tokenizer add BOS/EOS: prompts are ``[bos] + encode(prompt)``, training
sequences ``[bos] + concat(encode(segment) for segment in turns) + [eos]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from .files import atomic_write

# A real tokenizer with the SEED-X token layout (toy 1000-piece SentencePiece model + the 330
# SEED-X added tokens at 1000..1329), shipped so the untrained tiny stack speaks SEED-X prompts.
TINY_TOKENIZER_DIR = Path(__file__).parent / "assets" / "tiny_tokenizer"

MODEL_FILE = "tokenizer.model"
ADDED_TOKENS_FILE = "added_tokens.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILES = (MODEL_FILE, ADDED_TOKENS_FILE, SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE)

# The SEED-X added tokens (reference §5.2). Their ids are always looked up from the files.
IMG_TOKEN = "<img_{:05d}>"
LOC_TOKEN = "<loc-{}>"
BOI_TOKEN, EOI_TOKEN = "<img>", "</img>"
BOP_TOKEN, EOP_TOKEN = "<patch>", "</patch>"
BOX_START_TOKEN, BOX_END_TOKEN = "<box_start>", "<box_end>"

# LlamaTokenizer's constructor defaults, used for a role that neither json file names.
_LLAMA_SPECIAL_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                           "pad_token": None}


def _dump_json(obj) -> str:
    """The byte layout transformers 4.30 ``save_pretrained`` writes (the released files have it)."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


class SeedXTokenizer:
    """The 4.30.2 slow ``LlamaTokenizer`` for SEED-X folders, encode and decode id-exact.

    Build it with :meth:`from_pretrained`; the constructor takes the already-parsed file contents
    so that ``save_pretrained`` can write them back unchanged.
    """

    def __init__(self, model_proto: bytes, added_tokens: dict, special_tokens_map: dict,
                 tokenizer_config: dict):
        self._model_proto = model_proto
        self._special_tokens_map = special_tokens_map
        self._tokenizer_config = tokenizer_config
        self._check_config(tokenizer_config)

        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(model_proto)
        self.vocab_size = self.sp.get_piece_size()  # SentencePiece pieces only, as in 4.30.2

        self._check_added_tokens(added_tokens)
        self.added_tokens: dict[str, int] = dict(sorted(added_tokens.items(), key=lambda kv: kv[1]))
        self._added_by_id = {i: tok for tok, i in self.added_tokens.items()}

        # Special tokens and how they treat neighbouring whitespace when encoding.
        if not isinstance(special_tokens_map, dict):
            raise ValueError(f"{SPECIAL_TOKENS_MAP_FILE} must hold a JSON object")
        if "additional_special_tokens" in special_tokens_map:
            raise ValueError(f"{SPECIAL_TOKENS_MAP_FILE}: additional_special_tokens are not "
                             "supported (SEED-X's 330 tokens are plain added tokens)")
        self.bos_token = self._special_token("bos_token")
        self.eos_token = self._special_token("eos_token")
        self.unk_token = self._special_token("unk_token")
        self.pad_token = self._special_token("pad_token")
        self.special_tokens = [t for t in (self.bos_token, self.eos_token, self.unk_token,
                                           self.pad_token) if t is not None]
        self._strip = self._strip_rules()

        # One regex finds every token that must not reach SentencePiece. No SEED-X token is a
        # prefix of another, and longest-first alternation makes the search leftmost-longest,
        # which is what 4.30.2's trie does.
        no_split = sorted(self._strip, key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(map(re.escape, no_split)) + ")")

        self.bos_token_id = self._token_id(self.bos_token)
        self.eos_token_id = self._token_id(self.eos_token)
        self.unk_token_id = self._token_id(self.unk_token)
        self.pad_token_id = None if self.pad_token is None else self._token_id(self.pad_token)

        # SEED-X's own tokens.
        self.boi_token_id = self._seedx_id(BOI_TOKEN)
        self.eoi_token_id = self._seedx_id(EOI_TOKEN)
        self.bop_token_id = self._seedx_id(BOP_TOKEN)
        self.eop_token_id = self._seedx_id(EOP_TOKEN)
        self.box_start_token_id = self._seedx_id(BOX_START_TOKEN)
        self.box_end_token_id = self._seedx_id(BOX_END_TOKEN)
        self.img_token_ids = self._numbered_ids(IMG_TOKEN)  # <img_00000>, <img_00001>, ...
        self.loc_token_ids = self._numbered_ids(LOC_TOKEN)  # index = box coordinate bin

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> SeedXTokenizer:
        """Read the released folder layout (the four files of ``TOKENIZER_FILES``)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
        missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"tokenizer folder {folder} lacks {', '.join(missing)}")
        return cls(model_proto=(folder / MODEL_FILE).read_bytes(),
                   added_tokens=_read_json(folder / ADDED_TOKENS_FILE),
                   special_tokens_map=_read_json(folder / SPECIAL_TOKENS_MAP_FILE),
                   tokenizer_config=_read_json(folder / TOKENIZER_CONFIG_FILE))

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the four files back, byte-identical to a folder 4.30.2 would have saved (each
        whole or absent, `core_models.files.atomic_write`)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {MODEL_FILE: self._model_proto,
                 ADDED_TOKENS_FILE: _dump_json(self.added_tokens).encode("utf-8"),
                 SPECIAL_TOKENS_MAP_FILE: _dump_json(self._special_tokens_map).encode("utf-8"),
                 TOKENIZER_CONFIG_FILE: _dump_json(self._tokenizer_config).encode("utf-8")}
        for name, data in files.items():
            with atomic_write(folder / name) as tmp:
                tmp.write_bytes(data)

    @staticmethod
    def _check_config(config: dict) -> None:
        """Refuse settings under which 4.30.2 would behave differently from this class."""
        if not isinstance(config, dict):
            raise ValueError(f"{TOKENIZER_CONFIG_FILE} must hold a JSON object")
        # 4.30.2 defaults this to True and would then rewrite " ." -> "." etc. after decoding.
        if config.get("clean_up_tokenization_spaces", True):
            raise ValueError(f"{TOKENIZER_CONFIG_FILE}: clean_up_tokenization_spaces must be false "
                             "(as in SEED-X's folder); the clean-up pass is not implemented")
        if config.get("sp_model_kwargs"):
            raise ValueError(f"{TOKENIZER_CONFIG_FILE}: sp_model_kwargs must be empty; "
                             "sampling options would make the ids non-deterministic")

    def _check_added_tokens(self, added: dict) -> None:
        """4.30.2 requires the added ids to continue the base vocabulary without gaps."""
        if not isinstance(added, dict) or not all(
                isinstance(tok, str) and tok and type(i) is int for tok, i in added.items()):
            raise ValueError(f"{ADDED_TOKENS_FILE} must map non-empty token strings to integer ids")
        ids = sorted(added.values())
        if ids and ids[0] < self.vocab_size:
            clash = {t: i for t, i in added.items() if i < self.vocab_size}
            raise ValueError(f"{ADDED_TOKENS_FILE}: ids {clash} collide with the "
                             f"{self.vocab_size} SentencePiece pieces")
        if ids != list(range(self.vocab_size, self.vocab_size + len(ids))):
            raise ValueError(f"{ADDED_TOKENS_FILE}: ids must be {self.vocab_size}.."
                             f"{self.vocab_size + len(ids) - 1}, each used once, found {ids}")
        pieces = [t for t in added if self._piece_id(t) is not None]
        if pieces:
            raise ValueError(f"{ADDED_TOKENS_FILE}: {pieces} are already SentencePiece pieces")

    def _special_entry(self, role: str):
        """special_tokens_map.json wins over tokenizer_config.json, as in 4.30.2 loading.

        An entry is a plain string or an ``AddedToken`` dict (``{"content": "<s>", ...}``).
        """
        for source in (self._special_tokens_map, self._tokenizer_config):
            if source.get(role) is not None:
                return source[role]
        return _LLAMA_SPECIAL_DEFAULTS[role]

    def _special_token(self, role: str) -> str | None:
        entry = self._special_entry(role)
        return entry["content"] if isinstance(entry, dict) else entry

    def _strip_rules(self) -> dict[str, tuple[bool, bool]]:
        """(strip whitespace on the left, on the right) for every token cut out before encoding.

        4.30.2 strips both sides of a token unless some special-token role holds it as an
        ``AddedToken``, whose own lstrip/rstrip flags then apply. In SEED-X's files bos, eos and
        unk are such dicts with both flags false; pad is the plain string ``"<unk>"``, but unk is
        the same token as a dict, so ``<unk>`` keeps its neighbours' whitespace too.
        """
        rules = {tok: (True, True) for tok in [*self.added_tokens, *self.special_tokens]}
        for role in _LLAMA_SPECIAL_DEFAULTS:
            entry = self._special_entry(role)
            if isinstance(entry, dict):
                rules[entry["content"]] = (bool(entry.get("lstrip")), bool(entry.get("rstrip")))
        return rules

    def _piece_id(self, piece: str) -> int | None:
        i = self.sp.piece_to_id(piece)
        return i if self.sp.id_to_piece(i) == piece else None

    def _token_id(self, token: str) -> int:
        if token in self.added_tokens:
            return self.added_tokens[token]
        i = self._piece_id(token)
        if i is None:
            raise ValueError(f"special token {token!r} is neither a SentencePiece piece nor an "
                             "added token")
        return i

    def _seedx_id(self, token: str) -> int:
        if token not in self.added_tokens:
            raise ValueError(f"not a SEED-X tokenizer: {ADDED_TOKENS_FILE} lacks {token!r}")
        return self.added_tokens[token]

    def _numbered_ids(self, template: str) -> list[int]:
        ids = []
        while template.format(len(ids)) in self.added_tokens:
            ids.append(self.added_tokens[template.format(len(ids))])
        if not ids:
            raise ValueError(f"not a SEED-X tokenizer: {ADDED_TOKENS_FILE} lacks "
                             f"{template.format(0)!r}")
        return ids

    def __len__(self) -> int:
        return self.vocab_size + len(self.added_tokens)

    def img_token_string(self, n: int) -> str:
        """``<img_00000>…<img_{n-1}>``: the placeholder run inside every image block (n = 64)."""
        if not 0 <= n <= len(self.img_token_ids):
            raise ValueError(f"n must be in 0..{len(self.img_token_ids)}, got {n}")
        return "".join(IMG_TOKEN.format(i) for i in range(n))

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """4.30.2 ``encode(text, add_special_tokens=False)``; never adds BOS/EOS."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        parts = self._split_re.split(text)  # text, token, text, token, ..., text
        for i in range(1, len(parts), 2):
            strip_left, strip_right = self._strip[parts[i]]
            if strip_left:
                parts[i - 1] = parts[i - 1].rstrip()
            if strip_right:
                parts[i + 1] = parts[i + 1].lstrip()
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self._token_id(part))
            elif part:
                # 4.30.2 asks SentencePiece for pieces, then maps pieces to ids.
                ids.extend(self.sp.piece_to_id(p) for p in self.sp.encode(part, out_type=str))
        return ids

    def encode_segments(self, segments: Iterable[str]) -> list[int]:
        """Encode each segment on its own and concatenate, as SEED-X training builds sequences.

        Not the same as ``encode("".join(segments))``: each segment gets its own dummy prefix,
        so an answer starts with ``▁Hello`` and a later turn ``"\\n[INST]"`` with ``▁ <0x0A>``.
        """
        return [i for segment in segments for i in self.encode(segment)]

    # ------------------------------------------------------------------ decoding

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Pieces with ``▁``, byte pieces as ``<0xNN>``, added tokens verbatim."""
        return [self._id_to_token(i) for i in ids]

    def _id_to_token(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id in self._added_by_id:
            return self._added_by_id[token_id]
        if 0 <= token_id < self.vocab_size:
            return self.sp.id_to_piece(token_id)
        raise ValueError(f"token id {token_id} is outside the vocabulary 0..{len(self) - 1}")

    def decode(self, ids: Iterable[int]) -> str:
        """4.30.2 ``decode(ids, skip_special_tokens=False)``, byte for byte."""
        sub_texts, run = [], []
        for token in self.convert_ids_to_tokens(ids):
            if token in self.added_tokens:
                if run:
                    sub_texts.append(self._decode_run(run))
                    run = []
                sub_texts.append(token)
            else:
                run.append(token)
        if run:
            sub_texts.append(self._decode_run(run))
        return " ".join(sub_texts)

    def _decode_run(self, pieces: Sequence[str]) -> str:
        """4.30.2 ``LlamaTokenizer.convert_tokens_to_string`` for one run between added tokens."""
        out, sub, prev_is_special = "", [], False
        for i, piece in enumerate(pieces):
            if piece in self.special_tokens:
                if not prev_is_special and i != 0:
                    out += " "  # the quirk: lands before the text that precedes the token
                out += self.sp.decode(sub) + piece
                sub, prev_is_special = [], True
            else:
                sub.append(piece)
                prev_is_special = False
        return out + self.sp.decode(sub)


class StreamDecoder:
    """Text deltas for ids that arrive one at a time (a generation loop).

    ``decode(ids[:k])`` is not always a prefix of ``decode(ids)``, for two reasons:

    * byte-fallback pieces: a character split over several ``<0xNN>`` pieces shows as U+FFFD
      until its last byte arrives;
    * the 4.30.2 quirk: ``<s>``/``</s>``/``<unk>`` after text inserts a space *before* that text
      (``decode([Hello]) == "Hello"`` but ``decode([Hello, </s>]) == " Hello</s>"``).

    So text is returned only once it is final. Added tokens and the spaces joining sub-texts are
    final at once; the text of the run after the last added or special token is not:

    * ``eager=False`` (default): that text is held back until an added or special token closes it,
      or until :meth:`flush`. ``"".join(deltas) + flush() == tokenizer.decode(ids)`` exactly.
    * ``eager=True``: that text streams as soon as its characters are complete. When a special
      token then follows, its quirk space goes right before the token instead (``"Hello </s>"``
      for ``" Hello</s>"``). The result equals ``decode(ids)`` exactly unless ``<s>``/``</s>``/
      ``<unk>`` directly follows text, and always after the fixture README's normalisation N.
      A generation loop that stops at EOS without feeding it therefore streams live *and*
      exactly, unless the model writes ``<s>``/``<unk>`` after text.
    """

    def __init__(self, tokenizer: SeedXTokenizer, eager: bool = False):
        self.tokenizer = tokenizer
        self.eager = eager
        self._started = False  # a sub-text exists, so the next one is preceded by " "
        self._in_run = False   # inside a run of non-added ids (one sub-text of decode)
        self._text_pieces: list[str] = []  # pieces after the run's last special token
        self._emitted = ""     # eager: the part of decode(_text_pieces) returned already

    def put(self, token_id: int) -> str:
        """Feed one id; returns the text that became final (often "")."""
        tok = self.tokenizer
        token = tok.convert_ids_to_tokens([token_id])[0]
        if token in tok.added_tokens:
            return self._close_run() + self._joiner() + token
        out = "" if self._in_run else self._joiner()
        self._in_run = True
        if token in tok.special_tokens:
            text = tok.sp.decode(self._text_pieces)
            space = " " if self._text_pieces else ""  # == "previous token was text, not special"
            if self.eager:
                out += text[len(self._emitted):] + space + token
            else:
                out += space + text + token
            self._text_pieces, self._emitted = [], ""
        else:
            self._text_pieces.append(token)
            if self.eager:
                # A trailing U+FFFD may be a character whose remaining bytes are still to come.
                text = tok.sp.decode(self._text_pieces).rstrip("\ufffd")
                out += text[len(self._emitted):]
                self._emitted = text
        return out

    def flush(self) -> str:
        """Call once after the last id: returns the text still held back."""
        return self._close_run()

    def _joiner(self) -> str:
        joiner = " " if self._started else ""
        self._started = True
        return joiner

    def _close_run(self) -> str:
        text = self.tokenizer.sp.decode(self._text_pieces)[len(self._emitted):]
        self._in_run, self._text_pieces, self._emitted = False, [], ""
        return text
