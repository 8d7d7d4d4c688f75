"""System-prompt leakage: an answer that reproduces a run of ``n`` consecutive words (8 by
default) of its own request's system message. Pure: words in, a verdict out.

Each run of ``n`` consecutive words of the system message is hashed once (the hash of the
tuple of its words) into a set, with the set of its words, cached since an app sends the
same system message with every request. The answer's words are then fed as they arrive:
a word the system message does not have ends any run (one set lookup); only when ``n``
words in a row are the system message's is their tuple hashed and looked up. So the cost
is per answer word, whatever the length of the system message and however many n-grams
it has, and no answer text is kept beyond the last ``n`` words (and a word the last
piece ended inside of).

Words are lower-cased runs of anything but ASCII spaces and punctuation (UTF-8 bytes: a
letter outside ASCII is part of a word): a leak reworded only in case, punctuation,
spacing or markdown is still a leak; a paraphrase is not (that needs a model, not a
router).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from typing import Final, NamedTuple

from ctxroute.router.core.answertext import StreamText

# every ASCII byte but letters, digits and "_" separates words
_SEPARATORS: Final = bytes(
    b if b >= 0x80 or chr(b).isalnum() or b == 0x5F else 0x20 for b in range(256)
)
MAX_SYSTEM_WORDS: Final = 16_384  # watched per request (the first ones): bounded memory
_CACHE_ENTRIES: Final = 256  # distinct system messages whose n-grams are kept
_KEY_CHARS: Final = 4096  # a longer system message is cached by its digest
BATCH_BYTES: Final = 4096  # of a stream, read at once when no block waits on each piece


def words_of(text: str) -> list[bytes]:
    return text.lower().encode(errors="replace").translate(_SEPARATORS).split()


class Quotable(NamedTuple):
    """What a leak of one system message would quote: its n-grams' hashes, its words."""

    grams: frozenset[int]
    vocabulary: frozenset[bytes]


def quotable(words: list[bytes], n: int) -> Quotable:
    """The hash of every ``n`` consecutive words, and the words."""
    grams = frozenset(hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1))
    return Quotable(grams, frozenset(words) if grams else frozenset())


class SystemNgrams:
    """The n-gram sets of recent system messages (an LRU of ``_CACHE_ENTRIES``), by the
    message itself when it is short (a dict lookup: the common case, an app's one system
    message), else by its digest (the key's size is bounded either way)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._cache: OrderedDict[str | bytes, Quotable] = OrderedDict()

    def of(self, texts: list[str]) -> Quotable:
        text = texts[0] if len(texts) == 1 else "\n".join(texts)
        key: str | bytes = text
        if len(text) > _KEY_CHARS:
            key = hashlib.blake2b(text.encode(errors="surrogatepass"), digest_size=16).digest()
        cache = self._cache
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
            return found
        found = quotable(words_of(text)[:MAX_SYSTEM_WORDS], self.n)
        cache[key] = found
        if len(cache) > _CACHE_ENTRIES:
            cache.popitem(last=False)
        return found


class LeakWatch:
    """One answer's words against its system message's n-grams, fed piece by piece.
    ``leaked`` turns true at the first word that completes a quoted run of ``n``."""

    __slots__ = ("_grams", "_partial", "_vocabulary", "_window", "leaked", "n")

    def __init__(self, quoted: Quotable, n: int) -> None:
        self._grams, self._vocabulary = quoted
        self.n = n
        # the last words, up to n, all of them the system message's (another ends a run)
        self._window: deque[bytes] = deque(maxlen=n)
        self._partial = b""  # a word the last piece ended inside of
        self.leaked = False

    def feed(self, text: str) -> bool:
        """Another piece of the answer; whether the answer has leaked so far."""
        if self.leaked or not text:
            return self.leaked
        raw = text.lower().encode(errors="replace").translate(_SEPARATORS)
        if self._partial:
            raw = self._partial + raw
        words = raw.split()
        # a piece ending inside a word may have the rest of it in the next piece
        self._partial = words.pop() if words and raw[-1] != 0x20 else b""
        window, grams, vocabulary, n = self._window, self._grams, self._vocabulary, self.n
        for word in words:
            if word not in vocabulary:
                window.clear()
                continue
            window.append(word)
            if len(window) == n and hash(tuple(window)) in grams:
                self.leaked = True
                return True
        # a quote's last word may be still open ("...Northwind" before " Bank"): judged
        # as it stands, so that the piece that brings it is the one a block holds back
        partial = self._partial
        if partial and len(window) >= n - 1 and partial in vocabulary:
            self.leaked = hash((*tuple(window)[len(window) - n + 1 :], partial)) in grams
        return self.leaked

    def end(self) -> bool:
        """The answer is over: its last word counts too."""
        partial = self._partial
        if not self.leaked and partial and partial in self._vocabulary:
            window = self._window
            window.append(partial)
            self.leaked = len(window) == self.n and hash(tuple(window)) in self._grams
        self._partial = b""
        return self.leaked


class LeakGuard:
    """A leak watch over a stream's raw bytes (``StreamText`` reads the text), with what to
    do when it trips: ``block`` (end the stream) or ``flag`` (say so in the stream).

    ``block`` and ``flag`` judge each piece as it passes (before it is sent, for a block);
    ``monitor`` keeps the pieces (references, no copy) and reads them ``BATCH_BYTES`` at a
    time, the rest at the end (``finish``): one pattern search and one word split per
    batch, not per token."""

    __slots__ = ("block", "flag", "leaked", "pending", "pending_bytes", "text", "watch")

    def __init__(self, watch: LeakWatch, chat: bool, action: str) -> None:
        self.watch = watch
        self.text = StreamText(chat)
        self.block = action == "block"
        self.flag = action == "flag"
        self.leaked = False
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    def feed(self, data: bytes) -> bool:
        """Another piece of the stream's body; whether the answer has leaked by it (for
        ``block`` and ``flag``: whether this piece completed the quote)."""
        if not (self.block or self.flag):
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes < BATCH_BYTES:
                return False
            data = b"".join(self.pending)
            self.pending.clear()
            self.pending_bytes = 0
        text = self.text.feed(data)
        self.leaked = bool(text) and self.watch.feed(text)
        return self.leaked

    def finish(self) -> bool:
        """The stream is over: what was kept is read, and its last word counts."""
        if not self.leaked and self.pending:
            self.leaked = self.watch.feed(self.text.feed(b"".join(self.pending)))
            self.pending.clear()
        self.leaked = self.leaked or self.watch.end()
        return self.leaked

    def message(self) -> str:
        return self.message_for(self.watch)

    @staticmethod
    def message_for(watch: LeakWatch) -> str:
        return (
            f"the answer was stopped by the router: it reproduced {watch.n} or more "
            "consecutive words of the request's system message (rule system_prompt_leak)"
        )
