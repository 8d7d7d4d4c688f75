"""The stream scanner reads finish_reason, usage and [DONE] from raw relayed bytes."""

from __future__ import annotations

import orjson
from ctxroute.router.core.sse import StreamScanner, error_event

CHUNK = b'data: {"id":"c","choices":[{"index":0,"text":" a","finish_reason":null}]}\n\n'
LAST = (b'data: {"id":"c","choices":[{"index":0,"text":" b","finish_reason":"length",'
        b'"stop_reason":null}]}\n\n')  # fmt: skip
USAGE = (b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":12,"total_tokens":17,'
         b'"completion_tokens":5}}\n\n')  # fmt: skip
DONE = b"data: [DONE]\n\n"


def framed(payload: bytes) -> bytes:
    return b"%x\r\n" % len(payload) + payload + b"\r\n"


def test_a_complete_stream_reports_finish_usage_and_done_even_with_chunked_framing() -> None:
    scanner = StreamScanner()
    for event in (CHUNK, CHUNK, LAST, USAGE, DONE):
        scanner.feed(framed(event))
    summary = scanner.summary()
    assert summary.finish_reason == "length"
    assert (summary.prompt_tokens, summary.completion_tokens) == (12, 5)
    assert summary.done
    assert scanner.bytes_seen == sum(len(framed(e)) for e in (CHUNK, CHUNK, LAST, USAGE, DONE))


def test_markers_split_across_reads_are_still_found() -> None:
    scanner = StreamScanner()
    raw = CHUNK * 3 + LAST + USAGE + DONE
    for i in range(0, len(raw), 7):
        scanner.feed(raw[i : i + 7])
    summary = scanner.summary()
    assert summary.finish_reason == "length" and summary.completion_tokens == 5 and summary.done


def test_a_stream_cut_before_its_end_is_not_done_and_has_no_finish_reason() -> None:
    scanner = StreamScanner()
    for _ in range(40):
        scanner.feed(CHUNK)
    summary = scanner.summary()
    assert summary.finish_reason is None and not summary.done and summary.prompt_tokens is None


def test_the_error_event_is_an_sse_error_then_done() -> None:
    raw = error_event("upstream broke")
    first, second, rest = raw.split(b"\n\n")
    assert first.startswith(b"data: ") and second == b"data: [DONE]" and rest == b""
    assert orjson.loads(first[6:])["error"] == {
        "message": "upstream broke",
        "type": "BadGatewayError",
        "param": None,
        "code": 502,
    }


def test_model_output_saying_the_terminator_does_not_end_the_stream() -> None:
    # the model wrote "data: [DONE]\n\n" (as a model explaining SSE would); the stream was
    # then cut: it is not done
    said = (b'data: {"id":"c","choices":[{"index":0,"text":"data: [DONE]\\n\\n",'
            b'"finish_reason":null}]}\n\n')  # fmt: skip
    for framing in (lambda b: b, framed):
        scanner = StreamScanner()
        scanner.feed(framing(CHUNK))
        scanner.feed(framing(said))
        assert not scanner.summary().done
        scanner.feed(framing(DONE))  # and the real one, framed or not, still counts
        assert scanner.summary().done
    crlf = StreamScanner()
    crlf.feed(CHUNK + b"data: [DONE]\r\n\r\n")
    assert crlf.summary().done
