#!/usr/bin/env python3
"""Idle keep-alive clients for the memory benches (bench/vs-nginx.sh, bench/idle-memory.sh).

usage: idle-clients.py PORT N
Opens N connections to 127.0.0.1:PORT, makes one request on each and reads its response to the
end (so each is a live keep-alive connection, as a browser would leave it), prints "open", then
holds them until a line arrives on stdin (or stdin closes).

IDLE_REQUEST=post (environment) makes that one request a POST with a 1-byte body instead of a GET:
gatewise keeps hyper's connection state for a connection whose last request had a body (see
src/server/h1.rs), so the two show what holding an idle connection without hyper saves.
"""
import os, socket, sys

port, n = int(sys.argv[1]), int(sys.argv[2])
conns = []
req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
if os.environ.get("IDLE_REQUEST") == "post":
    req = b"POST / HTTP/1.1\r\nHost: bench\r\nContent-Length: 1\r\n\r\nx"
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed early")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        body += s.recv(65536)
    conns.append(s)
print("open", flush=True)
sys.stdin.readline()
