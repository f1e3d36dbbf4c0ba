"""The export's tokenizer without ``transformers``: the ``tokenizers`` library reading the export's ``tokenizer.json``
(tens of milliseconds) in place of ``AutoTokenizer``, whose import of ``transformers`` is 1.2-1.9 s of a warm start.

The two are alike only where the checkpoint's tokenizer class adds nothing to its backend's encoding and decoding (a
``transformers`` tokenizer may clean up spaces after decoding, or a class may override how it encodes), so the
exporter checks it (``matches_transformers``: texts of every kind, the template, every special token, random ids) and
records the answer in the manifest (``tokenizer_standalone``); the runtime reads the tokenizer standalone only where
the export says so (``load_tokenizer``). Chat templates still render through ``transformers`` (its Jinja environment):
the standalone tokenizer loads the ``transformers`` one on the first conversation (``serve`` at start:
``ready_for_conversations``).
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

TOKENIZER_FOLDER = "tokenizer"  # the export's tokenizer files, as ``save_pretrained`` wrote them
# the special tokens a ``transformers`` tokenizer names in its config (``all_special_tokens``)
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
LISTED_SPECIAL_TOKENS = ("extra_special_tokens", "additional_special_tokens")
# what a user and a template send: spacing, punctuation that clean-up rules touch, scripts, emoji, code, digits
PROBE_TEXTS = (
    "Describe the picture.",
    "What is in this image? Answer in one word .",
    "  two  spaces\tand\ttabs\n\nblank lines \n",
    "a . b , c ! d ? e 's f n't g 'm h 're i 've",
    "Ünïcödé façade — “quotes” … 中文字符 日本語 한국어 Ελληνικά русский עברית العربية",
    "😀👍🏽🇫🇷 \u200b zero\u200dwidth",
    "def f(x):\n    return x ** 2  # code; {json: [1, 2.5e-3]}",
    "12345678901234567890 3.14159 1,000,000",
    "",
    " leading",
    "trailing ",
)
RANDOM_ID_ROWS = 24  # decoded rows of random ids, 48 ids each (a fixed seed)


def special_texts(tokenizer) -> frozenset[str]:
    """The texts of ``tokenizer``'s special tokens: its added tokens marked special and those it names
    (``all_special_tokens``); what user text may not hold (``luvc.runtime.user_text``)."""
    added = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    return frozenset(added | set(tokenizer.all_special_tokens))


class StandaloneTokenizer:
    """The export's tokenizer (``folder``: its ``tokenizer`` folder) as ``tokenizers`` reads it, with what the runtime
    uses of a ``transformers`` tokenizer: encoding without special tokens added, decoding, its vocabulary, added and
    special tokens, and chat templates (through ``transformers``, loaded on first use)."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.backend = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        config_path = self.folder / "tokenizer_config.json"
        self.config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self._transformers: Any = None
        self._loading = threading.Lock()

    def __call__(self, text: str | list[str], add_special_tokens: bool = True) -> dict[str, Any]:
        """``{"input_ids": ...}`` of ``text`` (a string: one row; a list: a row each)."""
        if isinstance(text, str):
            return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}
        rows = self.backend.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return {"input_ids": [row.ids for row in rows]}

    def decode(self, token_ids, skip_special_tokens: bool = False) -> str:
        """The text of ``token_ids``."""
        return self.backend.decode([int(token) for token in token_ids], skip_special_tokens=skip_special_tokens)

    @property
    def added_tokens_decoder(self) -> dict:
        """The added tokens by id (``tokenizers.AddedToken``: ``content``, ``special``)."""
        return self.backend.get_added_tokens_decoder()

    @property
    def all_special_tokens(self) -> list[str]:
        """The special tokens the tokenizer's config names (BOS, EOS, padding, ... and its listed extra ones)."""
        named = [self.config.get(name) for name in NAMED_SPECIAL_TOKENS]
        listed = [token for name in LISTED_SPECIAL_TOKENS for token in self.config.get(name) or ()]
        texts = [token.get("content") if isinstance(token, dict) else token for token in named + listed]
        return list(dict.fromkeys(text for text in texts if isinstance(text, str) and text))

    def get_vocab(self) -> dict[str, int]:
        """Every token's text and id, added tokens included."""
        return self.backend.get_vocab(with_added_tokens=True)

    @property
    def transformers_tokenizer(self):
        """The same folder as ``transformers`` loads it (imported on first use: conversations' chat templates)."""
        with self._loading:
            if self._transformers is None:
                self._transformers = transformers_tokenizer(self.folder)
        return self._transformers

    def apply_chat_template(self, *args, **kwargs):
        """``transformers``' ``apply_chat_template`` (its Jinja environment), on the same tokenizer files."""
        return self.transformers_tokenizer.apply_chat_template(*args, **kwargs)


def transformers_tokenizer(folder: Path):
    """``folder``'s tokenizer as ``transformers`` loads it (``AutoTokenizer``, local files only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def load_tokenizer(export_folder: Path, standalone: bool):
    """The tokenizer of the export at ``export_folder``: read by ``tokenizers`` alone where the export checked that it
    matches ``transformers`` (``standalone``, the manifest's ``tokenizer_standalone``), else by ``transformers``."""
    folder = Path(export_folder) / TOKENIZER_FOLDER
    return StandaloneTokenizer(folder) if standalone else transformers_tokenizer(folder)


def ready_for_conversations(tokenizer) -> None:
    """Load now what rendering a conversation needs (a standalone tokenizer's ``transformers`` tokenizer), so that a
    server's first chat request does not pay for it."""
    if isinstance(tokenizer, StandaloneTokenizer):
        tokenizer.transformers_tokenizer  # noqa: B018 (loaded on first use)


def matches_transformers(folder: Path, template_texts: tuple[str, ...] = ()) -> bool:
    """Whether the tokenizer files in ``folder`` read by ``tokenizers`` alone encode (no special tokens added) and
    decode (special tokens skipped and kept) as ``transformers`` reads them, and name the same special tokens and
    vocabulary: on ``PROBE_TEXTS``, ``template_texts``, every added token inside text, and random ids."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        return False  # a tokenizer without a tokenizers-library file (a slow, Python-only one)
    reference, standalone = transformers_tokenizer(folder), StandaloneTokenizer(folder)
    vocabulary = standalone.get_vocab()
    if special_texts(reference) != special_texts(standalone) or reference.get_vocab() != vocabulary:
        return False
    added = [token.content for token in standalone.added_tokens_decoder.values()]
    texts = [*PROBE_TEXTS, *template_texts, *(f"a{token}b {token} " for token in added), "".join(added)]
    encoded = reference(texts, add_special_tokens=False)["input_ids"]
    if encoded != standalone(texts, add_special_tokens=False)["input_ids"]:
        return False
    pick = random.Random(0)
    ids = max(vocabulary.values()) + 1
    rows = [*encoded, *([pick.randrange(ids) for _ in range(48)] for _ in range(RANDOM_ID_ROWS))]
    return all(
        reference.decode(row, skip_special_tokens=skip) == standalone.decode(row, skip_special_tokens=skip)
        for row in rows
        for skip in (True, False)
    )
