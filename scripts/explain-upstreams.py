"""Misbehaving HTTP upstreams for scripts/capture-explain-fixtures.sh (loopback only).

Each behaviour listens on its own OS-chosen port; the ports are printed as one JSON line on
stdout, then the process serves until killed. Behaviours: ok, hang (accept, never answer),
close (read the request, close), reset (close with RST), bigheader (32 KiB header), invalid
(not HTTP), midbody (promise 1000 bytes, send 10, close), eager (plain
HTTP before the request: a TLS handshake fails), backlog (never accepts: once its
queue is full, connects time out), and dead/dead2 (ports that were bound and released:
refused).
"""
import json
import socket
import struct
import sys
import threading
import time


def read_head(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def ok(conn):
    read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    conn.close()


def hang(conn):
    read_head(conn)
    time.sleep(30)
    conn.close()


def close(conn):
    read_head(conn)
    conn.close()


def reset(conn):
    read_head(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def bigheader(conn):
    read_head(conn)
    big = b"X-Big: " + b"a" * 32768 + b"\r\n"
    conn.sendall(b"HTTP/1.1 200 OK\r\n" + big + b"Content-Length: 2\r\nConnection: close\r\n\r\nok")
    conn.close()


def invalid(conn):
    read_head(conn)
    conn.sendall(b"HELLO THERE\r\n\r\n")
    conn.close()


def midbody(conn):
    read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n0123456789")
    time.sleep(0.2)
    conn.close()


def eager(conn):
    # Answers plain HTTP before reading anything: a TLS client gets a non-TLS record.
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    time.sleep(0.2)
    conn.close()


def serve(sock, handler):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def listener(backlog=64):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(backlog)
    return s


def main():
    ports = {}
    keep = []
    for name, handler in [("ok", ok), ("ok2", ok), ("hang", hang), ("close", close),
                          ("reset", reset), ("bigheader", bigheader), ("invalid", invalid),
                          ("midbody", midbody), ("eager", eager)]:
        s = listener()
        ports[name] = s.getsockname()[1]
        threading.Thread(target=serve, args=(s, handler), daemon=True).start()
    # Never accepted: after the accept queue fills, new SYNs are dropped and connects time out.
    b = listener(0)
    keep.append(b)
    ports["backlog"] = b.getsockname()[1]
    fill = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", ports["backlog"]))
        except BlockingIOError:
            pass
        fill.append(c)
    keep.append(fill)
    for name in ("dead", "dead2"):
        d = listener()
        ports[name] = d.getsockname()[1]
        d.close()
    print(json.dumps(ports), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
