#!/usr/bin/env python3
"""linkbw.py serve PORT | send HOST PORT MIB: raw TCP throughput between the guests."""
import socket, sys, time
if sys.argv[1] == "serve":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[2]))); s.listen(1)
    c, _ = s.accept(); n = 0; t0 = None
    while True:
        b = c.recv(1 << 20)
        if not b: break
        if t0 is None: t0 = time.monotonic()
        n += len(b)
    dt = time.monotonic() - t0
    print(f"received {n} bytes in {dt:.3f} s: {n/dt/1048576:.2f} MiB/s")
else:
    host, port, mib = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    c = socket.create_connection((host, port)); buf = b"\x5a" * (1 << 20)
    t0 = time.monotonic()
    for _ in range(mib): c.sendall(buf)
    c.shutdown(socket.SHUT_WR); c.recv(1); dt = time.monotonic() - t0
    print(f"sent {mib} MiB in {dt:.3f} s: {mib/dt:.2f} MiB/s")
