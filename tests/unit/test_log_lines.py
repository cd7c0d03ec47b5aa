"""Splitting a followed log's bytes into lines (kube.LogLines), and what a reconnect makes of
the pieces (with logstream.Resume): the pure core of kube.stream_log."""

from __future__ import annotations

import asyncio

import aiohttp

from airflow_provider_skyshare.kube import LogLines, log_lines, stream_timeout
from airflow_provider_skyshare.logstream import Resume, fresh

STAMP = b"2027-01-15T08:00:00.000000001Z "


def fed(lines: LogLines, *chunks: bytes) -> list[bytes]:
    return [line for chunk in chunks for line in lines.feed(chunk)]


def test_lines_are_cut_at_newlines_across_chunks():
    lines = LogLines()
    assert fed(lines, b"a 1\nb ", b"2\n", b"c 3\nd") == [b"a 1", b"b 2", b"c 3"]
    assert lines.rest == b"d"


def test_an_unfinished_last_line_is_kept_back_until_the_server_ends_the_stream():
    """On an idle timeout stream_log never calls end(): the cut line (even cut inside its
    timestamp) is neither shown truncated nor said as the server's word; the reconnect sends
    it whole."""
    lines = LogLines()
    assert fed(lines, STAMP + b"epoch 1\n", STAMP[:7]) == [STAMP + b"epoch 1"]
    assert lines.rest == STAMP[:7]
    ended = LogLines()
    fed(ended, STAMP + b"last words")
    assert ended.end() == [STAMP + b"last words"]
    assert ended.end() == []


def streamed(chunks: list[bytes | None], max_line: int = 1 << 20) -> list[str]:
    """What stream_log yields for these chunks (b"": the server ended; None: idle timeout)."""
    todo = iter(chunks)

    async def next_chunk() -> bytes | None:
        return next(todo)

    async def run() -> list[str]:
        return [line async for line in log_lines(next_chunk, max_line)]

    return asyncio.run(run())


def test_an_idle_timeout_drops_the_unfinished_line_and_the_servers_end_keeps_it():
    first = (STAMP + b"epoch 1\n").decode()[:-1]
    assert streamed([STAMP + b"epoch 1\n" + STAMP + b"epo", None]) == [first]
    assert streamed([STAMP + b"epoch 1\n" + STAMP[:7], None]) == [first]
    assert streamed([STAMP + b"epoch 1\n", b"failed to watch", b""]) == [
        first, "failed to watch"]


def test_a_long_lines_pieces_carry_its_timestamp():
    lines = LogLines(max_line=len(STAMP) + 4)
    xs = b"x" * lines.max_line
    text = b"0123" + xs + b"tail"
    assert fed(lines, STAMP + text[:6], text[6:], b"\n" + STAMP + b"next\n") == [
        STAMP + b"0123", STAMP + xs, STAMP + b"tail", STAMP + b"next"]


def test_a_long_line_without_timestamp_stays_without_one():
    lines = LogLines(max_line=4)
    assert fed(lines, b"too many open files\n") == [b"too ", b"many", b" ope", b"n fi",
                                                     b"les"]


def test_a_reconnect_in_a_long_line_shows_each_piece_once():
    """Pieces are cut at the same places however the bytes come, so the replay's first
    pieces are the ones shown (counted at the same timestamp) and the rest follow."""
    line = STAMP + bytes(range(65, 91)) * 3 + b"\n"
    whole = [p.decode() for p in LogLines(max_line=40).feed(line)]
    first = LogLines(max_line=40)
    before = fed(first, line[:95])  # then the stream went idle: the rest is dropped
    shown, resume = fresh([p.decode() for p in before], Resume())
    again = fed(LogLines(max_line=40), line[:3], line[3:50], line[50:])
    more, resume = fresh([p.decode() for p in again], resume.reconnected())
    assert len(whole) > len(before) > 1
    assert shown + more == [p.partition(" ")[2] for p in whole]


def test_the_stream_timeout_is_idle_not_total():
    timeout = stream_timeout(300.0)
    assert isinstance(timeout, aiohttp.ClientTimeout)
    assert (timeout.total, timeout.sock_read, timeout.sock_connect) == (None, 300.0, 10)


def test_a_busy_stream_outlives_the_idle_timeout_and_an_idle_one_ends_without_its_cut_line():
    """Over a real local HTTP connection (aiohttp both ends): lines every 0.05 s for longer
    than the timeout all arrive; a stream that stops mid-line ends at the timeout, the cut
    line dropped."""
    from aiohttp import web

    async def busy(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for n in range(16):
            await resp.write(STAMP + f"line {n}\n".encode())
            await asyncio.sleep(0.05)
        return resp

    async def stalls(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(STAMP + b"whole\n" + STAMP + b"cut")
        await asyncio.sleep(30)  # cancelled when the client goes
        return resp

    async def read(session: aiohttp.ClientSession, url: str) -> list[str]:
        async with session.get(url, timeout=stream_timeout(0.5)) as resp:
            async def next_chunk() -> bytes | None:
                try:
                    return await resp.content.readany()
                except asyncio.TimeoutError:
                    return None
            return [line async for line in log_lines(next_chunk)]

    async def run() -> tuple[list[str], list[str]]:
        app = web.Application()
        app.router.add_get("/busy", busy)
        app.router.add_get("/stalls", stalls)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                return (await read(session, f"http://127.0.0.1:{port}/busy"),
                        await read(session, f"http://127.0.0.1:{port}/stalls"))
        finally:
            await runner.cleanup()

    busy_lines, stalled = asyncio.run(run())
    assert [line.partition(" ")[2] for line in busy_lines] == [f"line {n}" for n in range(16)]
    assert [line.partition(" ")[2] for line in stalled] == ["whole"]
