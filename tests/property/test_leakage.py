"""The leak watch against a reference model: an answer leaks when some n consecutive words
of it (lower-cased letter/digit runs) are n consecutive words of the system message,
however the answer is cut into pieces (a stream's tokens split words anywhere). And the
stream reader gives the text orjson reads from the same events, however the bytes are
cut."""

from __future__ import annotations

import re

import orjson
from ctxroute.router.core.answertext import StreamText
from ctxroute.router.core.leakage import LeakWatch, SystemNgrams
from hypothesis import given, settings
from hypothesis import strategies as st

WORDS = ["the", "code", "is", "seven", "three", "nine", "you", "are", "a", "bank",
         "never", "reveal", "Bank", "SEVEN", "x1", "été"]  # fmt: skip
N = 4


def reference(system: str, answer: str, n: int) -> bool:
    sys_words = re.findall(r"\w+", system.lower())
    grams = {tuple(sys_words[i : i + n]) for i in range(len(sys_words) - n + 1)}
    words = re.findall(r"\w+", answer.lower())
    return any(tuple(words[i : i + n]) in grams for i in range(len(words) - n + 1))


def cut(text: str, points: list[int]) -> list[str]:
    marks = sorted({min(p, len(text)) for p in points})
    pieces, last = [], 0
    for m in marks:
        pieces.append(text[last:m])
        last = m
    pieces.append(text[last:])
    return pieces


words = st.lists(st.sampled_from(WORDS), min_size=0, max_size=30)
seps = st.sampled_from([" ", "  ", ", ", ".\n", " - ", "**"])


@settings(max_examples=400, deadline=None)
@given(words, words, seps, st.lists(st.integers(0, 300), max_size=12))
def test_the_watch_agrees_with_the_reference(system: list[str], answer: list[str], sep: str,
                                             points: list[int]) -> None:  # fmt: skip
    system_text, answer_text = " ".join(system), sep.join(answer)
    watch = LeakWatch(SystemNgrams(N).of([system_text]), N)
    for piece in cut(answer_text, points):
        watch.feed(piece)
    assert watch.end() == reference(system_text, answer_text, N)


def test_a_quote_is_found_at_the_piece_that_completes_it_and_not_before() -> None:
    system = "alpha beta gamma delta epsilon"
    watch = LeakWatch(SystemNgrams(N).of([system]), N)
    assert not watch.feed(" alpha beta")
    assert not watch.feed(" gam")
    assert not watch.feed("ma")
    assert watch.feed(" delta")  # still open, judged as it stands: the fourth word


def test_the_system_message_cache_is_bounded() -> None:
    ngrams = SystemNgrams(N)
    for i in range(1000):
        ngrams.of([f"message number {i} with enough words"])
    assert len(ngrams._cache) == 256


def event(text: str, chat: bool) -> bytes:
    if chat:
        body = {"id": "x", "choices": [{"index": 0, "delta": {"content": text}}]}
    else:
        body = {"id": "x", "choices": [{"index": 0, "text": text}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=10), st.booleans(),
       st.lists(st.integers(0, 2000), max_size=10))  # fmt: skip
def test_the_stream_reader_reads_what_orjson_reads(texts: list[str], chat: bool,
                                                   points: list[int]) -> None:  # fmt: skip
    raw = b"".join(event(t, chat) for t in texts) + b"data: [DONE]\n\n"
    reader = StreamText(chat)
    marks = sorted({min(p, len(raw)) for p in points})
    got, last = "", 0
    for m in [*marks, len(raw)]:
        got += reader.feed(raw[last:m])
        last = m
    assert got == "".join(texts)
