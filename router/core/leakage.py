"""System-prompt leakage: an answer that reproduces a run of ``n`` consecutive words (8 by
default) of its own request's system message. Pure: words in, a verdict out.

The system message's word ``n``-grams are hashed once (a Rabin-Karp polynomial over the
words' own hashes, modulo the Mersenne prime 2^61 - 1) into a set, cached by the
message's digest since an app sends the same system message with every request. The
answer's words are then fed as they arrive: one multiply-add per word to roll the hash,
one set lookup. So the cost is per answer word, whatever the length of the system
message and however many n-grams it has, and no answer text is kept beyond the last word
(which may continue in the next piece).

Words are runs of letters and digits, lower-cased: a leak reworded only in case,
punctuation, spacing or markdown is still a leak; a paraphrase is not (that needs a model,
not a router).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

from ctxroute.router.core.answertext import StreamText

_WORD = re.compile(r"\w+")
_PRIME: Final = (1 << 61) - 1
_BASE: Final = 1_000_003
MAX_SYSTEM_WORDS: Final = 16_384  # watched per request (the first ones): bounded memory
_CACHE_ENTRIES: Final = 256  # distinct system messages whose n-grams are kept


def _words(text: str) -> list[int]:
    return [hash(w) & _PRIME for w in _WORD.findall(text.lower())]


def ngram_hashes(words: list[int], n: int) -> frozenset[int]:
    """The rolling hash of every ``n`` consecutive words."""
    if len(words) < n:
        return frozenset()
    top = pow(_BASE, n - 1, _PRIME)
    h = 0
    for w in words[:n]:
        h = (h * _BASE + w) % _PRIME
    out = {h}
    for i in range(n, len(words)):
        h = ((h - words[i - n] * top) * _BASE + words[i]) % _PRIME
        out.add(h)
    return frozenset(out)


class SystemNgrams:
    """The n-gram sets of recent system messages, by digest (an LRU of ``_CACHE_ENTRIES``:
    the key is a fixed-size digest, never the client's text)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._cache: OrderedDict[bytes, frozenset[int]] = OrderedDict()

    def of(self, texts: Iterable[str]) -> frozenset[int]:
        text = "\n".join(texts)
        key = hashlib.blake2b(text.encode(errors="surrogatepass"), digest_size=16).digest()
        cache = self._cache
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
            return found
        words = _words(text)[:MAX_SYSTEM_WORDS]
        grams = ngram_hashes(words, self.n)
        cache[key] = grams
        if len(cache) > _CACHE_ENTRIES:
            cache.popitem(last=False)
        return grams


class LeakWatch:
    """One answer's words against its system message's n-grams, fed piece by piece.
    ``leaked`` turns true at the first word that completes a quoted run of ``n``."""

    __slots__ = ("_filled", "_grams", "_hash", "_partial", "_top", "_window", "leaked", "n")

    def __init__(self, grams: frozenset[int], n: int) -> None:
        self._grams = grams
        self.n = n
        self._top = pow(_BASE, n - 1, _PRIME)
        self._window: list[int] = [0] * n  # the last n word hashes, a ring
        self._filled = 0  # words seen
        self._hash = 0
        self._partial = ""  # a word the last piece ended inside of
        self.leaked = False

    def feed(self, text: str) -> bool:
        """Another piece of the answer; whether the answer has leaked so far."""
        if self.leaked or not text:
            return self.leaked
        text = self._partial + text
        words = _WORD.findall(text.lower())
        # a piece ending in a letter may end inside a word the next piece completes
        if words and (text[-1].isalnum() or text[-1] == "_"):
            self._partial = words.pop()
        else:
            self._partial = ""
        for word in words:
            if self._add(hash(word) & _PRIME):
                self.leaked = True
                return True
        # a quote's last word may be still open ("...Northwind" before " Bank"): judged
        # as it stands, so that the piece that brings it is the one a block holds back
        if self._partial and self._filled >= self.n - 1:
            self.leaked = self._rolled(hash(self._partial) & _PRIME) in self._grams
        return self.leaked

    def end(self) -> bool:
        """The answer is over: its last word counts too."""
        if not self.leaked and self._partial:
            self.leaked = self._add(hash(self._partial) & _PRIME)
            self._partial = ""
        return self.leaked

    def _rolled(self, w: int) -> int:
        """The hash of the last ``n`` words if ``w`` came next."""
        n = self.n
        out = self._window[self._filled % n] if self._filled >= n else 0
        return ((self._hash - out * self._top) * _BASE + w) % _PRIME

    def _add(self, w: int) -> bool:
        self._hash = self._rolled(w)
        self._window[self._filled % self.n] = w
        self._filled += 1
        return self._filled >= self.n and self._hash in self._grams


class LeakGuard:
    """A leak watch over a stream's raw bytes (``StreamText`` reads the text), with what to
    do when it trips: ``block`` (end the stream) or ``flag`` (say so in the stream)."""

    __slots__ = ("block", "flag", "text", "watch")

    def __init__(self, watch: LeakWatch, chat: bool, action: str) -> None:
        self.watch = watch
        self.text = StreamText(chat)
        self.block = action == "block"
        self.flag = action == "flag"

    @property
    def leaked(self) -> bool:
        return self.watch.leaked

    def feed(self, data: bytes) -> bool:
        """Another piece of the stream's body; whether it completed a leak."""
        text = self.text.feed(data)
        return bool(text) and self.watch.feed(text)

    def message(self) -> str:
        return self.message_for(self.watch)

    @staticmethod
    def message_for(watch: LeakWatch) -> str:
        return (
            f"the answer was stopped by the router: it reproduced {watch.n} or more "
            "consecutive words of the request's system message (rule system_prompt_leak)"
        )
