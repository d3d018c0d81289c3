#!/usr/bin/env python3
"""linkbw.py NETNS_SRC NETNS_DST DST_ADDR [BYTES] [REPS]: TCP bandwidth between two network
namespaces (bytes/s, the median of REPS streams of BYTES each, default 3 x 1 GiB), the
"link floor" of a memory transfer: floor = bytes / bandwidth. Prints one number."""
import os, socket, statistics, subprocess, sys, time

def main():
    src, dst, addr = sys.argv[1:4]
    nbytes = int(sys.argv[4]) if len(sys.argv) > 4 else 1 << 30
    reps = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    port = 27499
    server = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{dst}", sys.executable, __file__, "--serve", addr, str(port), str(reps)],
        stdout=subprocess.PIPE)
    assert server.stdout.readline().strip() == b"ready"
    rates = []
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{src}", sys.executable, __file__, "--send", addr, str(port), str(nbytes), str(reps)],
        stdout=subprocess.PIPE, check=True).stdout.decode().split()
    server.wait()
    print(f"{statistics.median(float(x) for x in out):.0f}")

def serve(addr, port, reps):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, port)); l.listen(1)
    print("ready", flush=True)
    buf = bytearray(1 << 20)
    for _ in range(reps):
        s, _ = l.accept()
        while s.recv_into(buf):
            pass
        s.sendall(b"k"); s.close()

def send(addr, port, nbytes, reps):
    buf = b"\x5a" * (1 << 20)
    for _ in range(reps):
        s = socket.create_connection((addr, port))
        t = time.monotonic()
        for _ in range(nbytes // len(buf)):
            s.sendall(buf)
        s.shutdown(socket.SHUT_WR); s.recv(1)
        print(nbytes / (time.monotonic() - t))
        s.close()

if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "--send":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
