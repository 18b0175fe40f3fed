"""Hammers GET /race from 4 clients, then prints one settled reading per worker.

Usage: /usr/bin/python3 loadtest/tools/race_check.py PORT LABEL (server on 127.0.0.1:PORT)."""
import json, sys, threading, urllib.request
port = int(sys.argv[1])
def get(path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=60) as r:
        return json.loads(r.read())
def hammer():
    for _ in range(10):
        get("/race?n=20000")
ts = [threading.Thread(target=hammer) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
# one settled read per worker
seen = {}
for _ in range(40):
    r = get("/race?n=1")
    seen[(r["pid"], r["interpreter_id"])] = (r["expected_total"], r["observed_total"], r["lost_updates"], r["settled"])
print(sys.argv[2], seen)
