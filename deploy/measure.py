"""How the figures of deploy/README.md ("Measured figures") were taken.

Publishes N PKCS#12 issue jobs (confirmed, persistent) to <prefix>.jobs, waits for their N
results on <prefix>.results, and samples the running worker's /proc/<pid>/status (VmRSS,
VmHWM) and CPU time (utime + stime) every 0.25 s meanwhile; prints one JSON object.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pika
    /tmp/venv/bin/python deploy/measure.py AMQP_URL PREFIX N WORKER_PID TAG
"""
import json, os, sys, threading, time, uuid
import pika

url, prefix, n, pid, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
CLK = os.sysconf("SC_CLK_TCK")

def sample():
    st = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "Threads"):
            st[k] = int(v.split()[0])
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    st["cpu"] = (int(f[11]) + int(f[12])) / CLK  # utime + stime (fields 14, 15)
    return st

samples, stop = [], threading.Event()
def sampler():
    while not stop.is_set():
        try:
            samples.append((time.time(), sample()))
        except FileNotFoundError:
            return
        time.sleep(0.25)

params = pika.URLParameters(url)
conn = pika.BlockingConnection(params)
ch = conn.channel()
q = ch.queue_declare("", exclusive=True).method.queue
ch.queue_bind(q, f"{prefix}.results", "result.#")
ch.confirm_delivery()
before = sample()
t0 = time.time()
th = threading.Thread(target=sampler, daemon=True); th.start()
run = uuid.uuid4().hex[:8]
for i in range(n):
    job_id = f"measure-{tag}-{run}-{i}"
    job = {"job_id": job_id, "kind": "issue", "product": "SSL-Basic", "request_type": "pkcs12",
           "subject": {"cn": f"host{i}.example.com", "c": "DE"}}
    ch.basic_publish(f"{prefix}.jobs", "issue", json.dumps(job).encode(),
                     pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=job_id),
                     mandatory=True)
t_pub = time.time() - t0
statuses, got = {}, 0
for method, props, body in ch.consume(q, auto_ack=True, inactivity_timeout=120):
    if method is None:
        print("timeout waiting for results", file=sys.stderr); break
    r = json.loads(body)
    if not r["job_id"].startswith(f"measure-{tag}-{run}-"):
        continue
    s = r["status"] + ("" if r["status"] == "succeeded" else ":" + r.get("error", {}).get("code", "?"))
    statuses[s] = statuses.get(s, 0) + 1
    got += 1
    if got == n:
        break
elapsed = time.time() - t0
time.sleep(2)
stop.set(); th.join()
after = sample()
conn.close()
peak_rss = max(s["VmRSS"] for _, s in samples)
rss = sorted(s["VmRSS"] for _, s in samples)
# CPU rate over the busy window: cores used = d(cpu)/d(t)
busy = [(t, s["cpu"]) for t, s in samples]
rates = [(busy[i + 4][1] - busy[i][1]) / (busy[i + 4][0] - busy[i][0]) for i in range(len(busy) - 4)]
print(json.dumps({
    "tag": tag, "jobs": n, "results": got, "statuses": statuses,
    "publish_s": round(t_pub, 1), "elapsed_s": round(elapsed, 1), "jobs_per_s": round(got / elapsed, 1),
    "rss_before_kib": before["VmRSS"], "rss_peak_kib": peak_rss, "rss_median_kib": rss[len(rss) // 2],
    "rss_after_kib": after["VmRSS"], "hwm_after_kib": after["VmHWM"], "threads": after["Threads"],
    "cpu_s_during": round(after["cpu"] - before["cpu"], 2),
    "cpu_cores_avg": round((after["cpu"] - before["cpu"]) / elapsed, 3),
    "cpu_cores_peak_1s": round(max(rates), 3) if rates else None,
}, indent=1))
