#!/usr/bin/env python3
"""Two sinks for measuring what trace export costs (BENCHMARKS.md, section 8), standard library
only: an SMTP server that accepts every message at once, and an OTLP/HTTP collector that answers
every POST /v1/traces with 200 and an empty ExportTraceServiceResponse, counting what it got.

    python3 benches/trace_sinks.py --smtp 1025 --otlp 4318

Ctrl-C prints how many export requests and bytes arrived.
"""

import argparse
import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received = {"requests": 0, "bytes": 0}


class Collector(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        received["requests"] += 1
        received["bytes"] += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


async def smtp_session(reader, writer):
    writer.write(b"220 sink ESMTP\r\n")
    in_data = False
    while line := await reader.readline():
        if in_data:
            if line == b".\r\n":
                in_data = False
                writer.write(b"250 OK\r\n")
        else:
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-sink\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                in_data = True
                writer.write(b"354 go on\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 OK\r\n")
        await writer.drain()
    writer.close()


async def main(args):
    http = ThreadingHTTPServer(("127.0.0.1", args.otlp), Collector)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    smtp = await asyncio.start_server(smtp_session, "127.0.0.1", args.smtp)
    print(f"SMTP on 127.0.0.1:{args.smtp}, OTLP/HTTP on http://127.0.0.1:{args.otlp}", flush=True)
    async with smtp:
        await smtp.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smtp", type=int, default=1025)
    parser.add_argument("--otlp", type=int, default=4318)
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        print(f"\nOTLP: {received['requests']} requests, {received['bytes']} bytes")
