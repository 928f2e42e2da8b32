#!/usr/bin/env python3
"""Hand measurements of the listeners' admission and shutdown against a voicebridge
binary, on loopback ports 19490 (media) and 19491 (admin). Not a test: it prints what
it sees, nothing is asserted. Usage:

    cargo build --release
    python3 scripts/measure_admission.py target/release/voicebridge

A. 200 authenticated upgrades in 2 s with the default settings (how many get 429);
B. 12 wrong-token upgrades from one address, then the right token;
C. SIGTERM with 50 half-sent GET /metrics on the admin port and no call;
D. the same with one live call: exit time after the call ends;
E. 300 idle admin connections: how many are refused, when the rest are closed.
"""
import base64, os, select, signal, socket, subprocess, sys, tempfile, time
from collections import Counter

BIN = sys.argv[1]
TOKEN = "tok-0123456789abcdef-right"
WRONG = "tok-wrong-value-xxxxxxxxxxxxxxxx"

def start(extra=""):
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "c.toml")
    open(cfg, "w").write(f'[server]\nlisten = "127.0.0.1:19490"\nauth_tokens = ["{TOKEN}"]\n[admin]\nlisten = "127.0.0.1:19491"\n[log]\nformat = "json"\n{extra}')
    log = open(os.path.join(d, "out.log"), "w")
    p = subprocess.Popen([BIN, "serve", "-c", cfg], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", 19491), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.3)
    return p, os.path.join(d, "out.log")

def upgrade(path, auth=None):
    s = socket.create_connection(("127.0.0.1", 19490), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:19490\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    if auth:
        req += f"Authorization: Bearer {auth}\r\n"
    s.sendall((req + "\r\n").encode())
    buf = b""
    while b"\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    status = int(buf.split(b" ")[1]) if buf.startswith(b"HTTP/1.1") else 0
    return s, status

def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill(); p.wait()

# A. 200 authenticated calls in 2 s, default settings.
p, log = start()
socks, statuses = [], []
t0 = time.monotonic()
for i in range(200):
    target = t0 + i * 0.010
    now = time.monotonic()
    if target > now:
        time.sleep(target - now)
    s, st = upgrade(f"/call/burst-{i}?rate=8000", TOKEN)
    socks.append(s); statuses.append(st)
took = time.monotonic() - t0
print(f"A. 200 authenticated upgrades in {took:.2f} s: statuses {dict(Counter(statuses))}, 429s: {statuses.count(429)}")
for s in socks: s.close()
stop(p)

# B. 12 wrong-token upgrades from one address, then the right one.
p, log = start()
bad = []
for i in range(12):
    s, st = upgrade(f"/call/bad-{i}?rate=8000", WRONG); s.close(); bad.append(st)
s, good = upgrade("/call/good-after-bad?rate=8000", TOKEN)
print(f"B. 12 wrong tokens: {dict(Counter(bad))}; then the right token: {good}")
s.close()
stop(p)
lines = [l for l in open(log) if "upgrade rejected" in l]
summ = [l for l in open(log) if "(summary)" in l]
print(f"   log lines for the 12 rejections: {len(lines)} in full + {len(summ)} summary line(s)")

# C. SIGTERM with 50 half-sent GET /metrics on the admin port, no calls.
p, log = start()
held = []
for i in range(50):
    s = socket.create_connection(("127.0.0.1", 19491))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    held.append(s)
time.sleep(0.2)
t0 = time.monotonic()
p.send_signal(signal.SIGTERM)
try:
    p.wait(timeout=40)
    print(f"C. exit after SIGTERM with 50 half-sent admin requests: {(time.monotonic()-t0)*1000:.0f} ms, code {p.returncode}")
except subprocess.TimeoutExpired:
    print("C. still running 40 s after SIGTERM (systemd would SIGKILL)")
    p.kill(); p.wait()
for s in held: s.close()

# D. One live call and 50 half-sent admin requests; SIGTERM; then the call ends.
p, log = start()
held = []
for i in range(50):
    s = socket.create_connection(("127.0.0.1", 19491))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    held.append(s)
call, st = upgrade("/call/live-1?rate=8000", TOKEN)
assert st == 101, st
time.sleep(0.3)
p.send_signal(signal.SIGTERM)
time.sleep(1.0)
t0 = time.monotonic()
call.close()
try:
    p.wait(timeout=40)
    print(f"D. exit after the last call ended (SIGTERM sent 1 s before, 50 half-sent admin requests): {(time.monotonic()-t0)*1000:.0f} ms, code {p.returncode}")
except subprocess.TimeoutExpired:
    print("D. still running 40 s after the last call ended")
    p.kill(); p.wait()
for s in held: s.close()

# E. 300 idle admin connections.
p, log = start()
conns = [socket.create_connection(("127.0.0.1", 19491)) for _ in range(300)]
t0 = time.monotonic()
refused, closed_at = 0, []
pending = {s.fileno(): s for s in conns}
while pending and time.monotonic() - t0 < 45:
    r, _, _ = select.select(list(pending.values()), [], [], 1.0)
    for s in r:
        data = s.recv(4096)
        if data.startswith(b"HTTP/1.1 503"):
            refused += 1
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
        closed_at.append(time.monotonic() - t0)
        del pending[s.fileno()]
print(f"E. 300 idle admin connections: {refused} refused at once (503), all closed after {max(closed_at):.1f} s, still open after 45 s: {len(pending)}")
for s in conns: s.close()
stop(p)
