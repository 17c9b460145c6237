#!/usr/bin/env python3
"""Times 10 demo scans in a row: scan -> connected, through the API of a
running `whatsd serve --demo` (admin token and address below).

    WHATSD_ADMIN_TOKEN=demo-admin-token-0123456789abcdef \
      cargo run --features demo -- serve --demo --config cfg.toml  # listen = "127.0.0.1:18081"
    python3 scripts/demo_scans.py

Prints the figures; asserts only that each scan connects within 30 s.
"""
import json, time, urllib.request
B="http://127.0.0.1:18081"; H={"Authorization":"Bearer demo-admin-token-0123456789abcdef","Content-Type":"application/json"}
def req(m,p,body=None):
    r=urllib.request.Request(B+p,method=m,headers=H,data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(r,timeout=10) as f: return f.status, json.loads(f.read() or b"null")
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read() or b"null")
times=[]
for i in range(10):
    sid=f"scan-{i}"
    assert req("POST","/v1/sessions",{"id":sid})[0]==201
    deadline=time.time()+30
    while req("GET",f"/v1/sessions/{sid}/qr")[0]!=200:
        assert time.time()<deadline; time.sleep(0.01)
    t0=time.time()
    st,b=req("POST",f"/v1/demo/sessions/{sid}/scan",{})
    assert st in (200,201),(st,b)
    while req("GET",f"/v1/sessions/{sid}")[1]["state"]!="connected":
        assert time.time()<t0+30; time.sleep(0.01)
    times.append((time.time()-t0)*1000)
print("demo scans -> connected (ms):", " ".join(f"{t:.0f}" for t in times), "| max %.0f" % max(times))
