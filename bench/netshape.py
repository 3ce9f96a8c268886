"""A shaping TCP proxy on loopback: the bench's simulated network (no toxiproxy or netem here).

    python -m bench.netshape --latency-ms 20 --mib-per-s 40 --upstream 127.0.0.1:PORT [--upstream ...]

prints ``READY <port> [<port> ...]`` (one listening port on 127.0.0.1 per upstream, same order) and
forwards every accepted connection to its upstream until SIGTERM, then prints
``FORWARDED <connections> <bytes>``. It runs in its own process so
that its work never shares the measured app's event loop. Bytes pass through untouched: TLS (to
Azurite) is end to end between the app and the server, so certificates and auth work unchanged
(the server certificate is for 127.0.0.1, the proxy's address too).

What it simulates, per connection and direction:
- **latency**: every byte is delivered ``latency / 2`` after it was sent, each way, so each
  request/response exchange costs one extra round trip of ``--latency-ms`` (as does each TCP and
  TLS handshake), while bytes already in flight keep flowing (a pipe, not a stop-and-wait);
- **bandwidth**: at most ``--mib-per-s`` per connection and direction (the serialization delay of
  a link of that speed), so parallel requests on separate connections add up, as they do against
  Blob Storage, whose limits are per request/connection far below an account's total.

What it does not: packet loss, retransmission, jitter, TCP slow start or window limits, a shared
bottleneck across connections (the machine's CPU is the only total limit), the server's own
per-request time (Azurite and the emulator still answer at loopback speed), DNS or connection
limits of a real front end. Memory: at most ``WINDOW_BYTES`` queued per direction; past that it
stops reading, and TCP pushes back on the sender.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections import deque

READ_BYTES = 256 * 1024  # 6 ms at 40 MiB/s: fine-grained next to the latency, few wake-ups
WINDOW_BYTES = 4 * 1024 * 1024  # queued per direction before the sender is pushed back


class Shaping:
    def __init__(self, latency_s: float, bytes_per_s: float) -> None:
        self.one_way_s = latency_s / 2
        self.bytes_per_s = bytes_per_s
        self.connections = 0  # counted for the bench: proof that the traffic went through
        self.bytes = 0


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shaping: Shaping) -> None:
    """Forward one direction: each chunk leaves at max(now, link free) + size / rate + one-way delay."""
    loop = asyncio.get_running_loop()
    queue: deque[tuple[float, bytes]] = deque()
    queued = 0
    more = asyncio.Event()  # something queued, or the end
    room = asyncio.Event()  # the queue went below the window
    room.set()
    ended = False
    link_free = 0.0

    async def read() -> None:
        nonlocal queued, ended, link_free
        try:
            while True:
                await room.wait()
                data = await reader.read(READ_BYTES)
                if not data:
                    break
                shaping.bytes += len(data)
                now = loop.time()
                link_free = max(now, link_free) + len(data) / shaping.bytes_per_s
                queue.append((link_free + shaping.one_way_s, data))
                queued += len(data)
                if queued >= WINDOW_BYTES:
                    room.clear()
                more.set()
        finally:
            ended = True
            more.set()

    async def write() -> None:
        nonlocal queued
        while True:
            if not queue:
                if ended:
                    break
                more.clear()
                await more.wait()
                continue
            due, data = queue.popleft()
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
            queued -= len(data)
            if queued < WINDOW_BYTES:
                room.set()
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()

    reading = asyncio.create_task(read())
    try:
        await write()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await reading


async def _connection(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream: tuple[str, int],
    shaping: Shaping,
) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection(*upstream)
    except OSError:
        client_writer.close()
        return
    shaping.connections += 1
    pumps = [
        asyncio.create_task(_pump(client_reader, server_writer, shaping)),
        asyncio.create_task(_pump(server_reader, client_writer, shaping)),
    ]
    try:
        # One side failing (a reset) ends both; a clean end of one direction waits for the other.
        await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for writer in (client_writer, server_writer):
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()


async def serve(upstreams: list[tuple[str, int]], shaping: Shaping) -> None:
    servers = []
    connections: set[asyncio.Task[None]] = set()
    for upstream in upstreams:

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: tuple[str, int] = upstream) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await _connection(r, w, up, shaping)
            except asyncio.CancelledError:
                pass  # shutting down: the streams machinery must not see a cancelled handler
            finally:
                connections.discard(task)

        servers.append(await asyncio.start_server(handle, "127.0.0.1", 0))
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    print("READY " + " ".join(str(port) for port in ports), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    for task in list(connections):  # open keep-alive connections: end them quietly
        task.cancel()
    await asyncio.gather(*connections, return_exceptions=True)
    print(f"FORWARDED {shaping.connections} {shaping.bytes}", flush=True)


def _upstream(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="round trip added to every exchange")
    parser.add_argument("--mib-per-s", type=float, default=40.0, help="bandwidth per connection and direction")
    parser.add_argument("--upstream", action="append", type=_upstream, required=True, metavar="HOST:PORT")
    args = parser.parse_args()
    asyncio.run(serve(args.upstream, Shaping(args.latency_ms / 1000, args.mib_per_s * 1024 * 1024)))


if __name__ == "__main__":
    main()
