"""The chaos suite: the whole platform under a steady mixed load while its
processes, its dependencies and its network fail one after another.

Private instances only: a Postgres, a Redis and a RabbitMQ node of its own
(on their own ports and folders), 2 API instances, 2 schedulers and 3
workers, each worker in a network namespace of its own (a veth pair to the
host) so the network between hosts can be delayed or cut. The machine's
shared services are never touched. Standard library only; run as root
(namespaces, and the private servers run as their system users).

    loadtests/chaos/run.sh            # the full suite (several minutes)
    loadtests/chaos/run.sh --short    # one fault of each kind (CI)

Prints one line per fault and writes a JSON report (--report). Exits 1 if
an accepted job was lost, a usage record duplicated, a response was a 500,
a stream hung, a service exited on its own, or a fault took longer than 15 s
to recover from once its dependency was back.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PG_BIN = None
PG_PORT, REDIS_PORT, AMQP_PORT, AMQP_DIST_PORT = 55433, 6398, 5698, 25698
NET = "10.231"  # 10.231.<i>.1 host side, 10.231.<i>.2 the worker's namespace
RECOVERY_LIMIT_S = 15.0


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def sh(cmd, check=True, **kw):
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True, **kw)


def port_open(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def pg_bin():
    versions = sorted(os.listdir("/usr/lib/postgresql"), key=lambda v: int(v))
    return f"/usr/lib/postgresql/{versions[-1]}/bin"


# ---------------------------------------------------------------- dependencies


class Postgres:
    def __init__(self, base, host_addrs):
        self.dir = os.path.join(base, "pg")
        os.makedirs(self.dir)
        shutil.chown(self.dir, "postgres")
        self.data = os.path.join(self.dir, "data")
        b = pg_bin()
        self.ctl = f"{b}/pg_ctl"
        sh(f"su postgres -c '{b}/initdb -D {self.data} -U postgres --auth=trust -N' ")
        with open(os.path.join(self.data, "pg_hba.conf"), "a") as f:
            f.write(f"host all all {NET}.0.0/16 trust\n")
        listen = ",".join(["127.0.0.1"] + host_addrs)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"port = {PG_PORT}\nlisten_addresses = '{listen}'\nunix_socket_directories = '{self.dir}'\n"
                    "max_connections = 300\nfsync = on\n")
        self.start()

    def start(self):
        sh(f"su postgres -c '{self.ctl} -D {self.data} -l {self.dir}/log -w -t 60 start'")

    def stop_fast(self):
        sh(f"su postgres -c '{self.ctl} -D {self.data} -m fast -w stop'")

    def kill9_all(self):
        # Every process of this instance: the postmaster and its children.
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            pid = int(f.readline())
        children = sh(f"pgrep -P {pid}", check=False).stdout.split()
        for p in [pid] + [int(c) for c in children]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)

    def url(self, host="127.0.0.1", db="maas"):
        return f"postgres://postgres@{host}:{PG_PORT}/{db}"

    def psql(self, sql):
        r = subprocess.run(["psql", self.url(), "-qtAX", "-v", "ON_ERROR_STOP=1"], input=sql.rstrip().rstrip(";") + ";\n",
                           capture_output=True, text=True, check=True)
        return r.stdout.strip()

    def close(self):
        sh(f"su postgres -c '{self.ctl} -D {self.data} -m immediate stop'", check=False)


class Redis:
    def __init__(self, base, host_addrs):
        self.dir = os.path.join(base, "redis")
        os.makedirs(self.dir)
        self.bind = " ".join(["127.0.0.1"] + host_addrs)
        self.start()

    def start(self):
        sh(f"redis-server --port {REDIS_PORT} --bind {self.bind} --protected-mode no --daemonize yes "
           f"--save '' --appendonly no --dir {self.dir} --pidfile {self.dir}/pid --logfile {self.dir}/log")
        for _ in range(50):
            if sh(f"redis-cli -p {REDIS_PORT} ping", check=False).stdout.strip() == "PONG":
                return
            time.sleep(0.1)
        raise RuntimeError("private redis did not start")

    def stop(self):
        sh(f"redis-cli -p {REDIS_PORT} shutdown nosave", check=False)
        time.sleep(0.3)

    def close(self):
        self.stop()


class RabbitMQ:
    def __init__(self, base, host_addrs):
        self.dir = os.path.join(base, "rabbitmq")
        os.makedirs(os.path.join(self.dir, "mnesia"))
        os.makedirs(os.path.join(self.dir, "log"))
        open(os.path.join(self.dir, "plugins"), "w").close()
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            for i, a in enumerate(["127.0.0.1"] + host_addrs):
                f.write(f"listeners.tcp.{i + 1} = {a}:{AMQP_PORT}\n")
            # The workers connect from their namespaces as guest.
            f.write("loopback_users = none\n")
        with open(os.path.join(self.dir, "advanced.config"), "w") as f:
            f.write("[].\n")
        sh(f"chown -R rabbitmq:rabbitmq {self.dir}")
        self.node = f"maaschaos{os.getpid()}@localhost"
        self.env = dict(os.environ,
                        RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_PORT=str(AMQP_PORT),
                        RABBITMQ_DIST_PORT=str(AMQP_DIST_PORT),
                        RABBITMQ_MNESIA_BASE=os.path.join(self.dir, "mnesia"),
                        RABBITMQ_LOG_BASE=os.path.join(self.dir, "log"),
                        RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.dir, "plugins"),
                        RABBITMQ_PID_FILE=os.path.join(self.dir, "pid"),
                        RABBITMQ_CONFIG_FILE=os.path.join(self.dir, "rabbitmq"),
                        RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(self.dir, "advanced.config"))
        self.proc = None
        self.start()

    def startups(self):
        path = os.path.join(self.dir, "log", f"{self.node}.log")
        try:
            with open(path, errors="replace") as f:
                return f.read().count("Server startup complete")
        except OSError:
            return 0

    def start(self):
        before = self.startups()
        # The return is the moment the listener takes connections: polled
        # every 50 ms beside the slower startup check below.
        self.listening_at = None

        def watch_port():
            while self.listening_at is None:
                if port_open(AMQP_PORT):
                    self.listening_at = time.monotonic()
                    return
                time.sleep(0.05)

        threading.Thread(target=watch_port, daemon=True).start()
        out = open(os.path.join(self.dir, "server.out"), "a")
        self.proc = subprocess.Popen(["rabbitmq-server"], env=self.env, stdout=out, stderr=out,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        # await_startup fails at once until the Erlang node itself is up.
        deadline = time.monotonic() + 120
        while True:
            r = subprocess.run(["rabbitmqctl", "-n", self.node, "await_startup", "--timeout", "60"],
                               env=self.env, capture_output=True)
            # Only the log says when the listeners take connections.
            if r.returncode == 0 and self.startups() > before and port_open(AMQP_PORT):
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"private rabbitmq did not start: {r.stderr.decode()[-300:]}")
            time.sleep(0.5)

    def stop(self):
        subprocess.run(["rabbitmqctl", "-n", self.node, "stop"], env=self.env, capture_output=True)
        if self.proc:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self):
        self.stop()


class DelayProxy:
    """A TCP relay that can add latency (a stand-in for `tc netem`, which
    not every kernel has): the delayed worker reaches its dependencies
    through one of these."""

    def __init__(self, host, port, upstream):
        import socket
        self.upstream, self.delay_s = upstream, 0.0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        import socket
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.upstream, timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    def pipe(self, a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if self.delay_s:
                    time.sleep(self.delay_s)
                b.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown, not only close: it wakes the other direction's
            # thread, so both ends see the link go.
            for x in (a, b):
                try:
                    x.shutdown(2)
                except OSError:
                    pass
                try:
                    x.close()
                except OSError:
                    pass

    def close(self):
        self.sock.close()


class Namespaces:
    """One network namespace per worker, joined to the host by a veth pair."""

    def __init__(self, n):
        self.names = []
        tag = os.getpid() % 10000
        for i in range(1, n + 1):
            ns, h, w = f"maasc{tag}w{i}", f"mch{tag}h{i}", f"mch{tag}n{i}"
            sh(f"ip netns add {ns}")
            self.names.append((ns, h, w, i))
            sh(f"ip link add {h} type veth peer name {w}")
            sh(f"ip link set {w} netns {ns}")
            sh(f"ip addr add {NET}.{i}.1/24 dev {h} && ip link set {h} up")
            sh(f"ip netns exec {ns} ip addr add {NET}.{i}.2/24 dev {w}")
            sh(f"ip netns exec {ns} ip link set {w} up && ip netns exec {ns} ip link set lo up")

    def host_addrs(self):
        return [f"{NET}.{i}.1" for (_, _, _, i) in self.names]


    def cut(self, i, down):
        _, h, _, _ = self.names[i]
        sh(f"ip link set {h} {'down' if down else 'up'}")

    def close(self):
        for ns, h, _, _ in self.names:
            sh(f"ip link del {h}", check=False)
            sh(f"ip netns del {ns}", check=False)


# ---------------------------------------------------------------- services


class Service:
    def __init__(self, name, binary, env, log_dir, netns=None):
        self.name, self.binary, self.env, self.log_dir, self.netns = name, binary, env, log_dir, netns
        self.proc, self.port, self.restarts = None, None, 0
        self.start()

    def start(self):
        cmd = [os.path.join(ROOT, "target", "release", self.binary)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        err = open(os.path.join(self.log_dir, f"{self.name}.log"), "a")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=err,
                                     stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        self.port = int(line.rsplit(" ", 1)[-1])
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def running(self):
        return self.proc.poll() is None

    def kill9(self):
        # `ip netns exec` runs the binary in its own process: kill that.
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def restart(self):
        self.restarts += 1
        self.start()

    def stop(self):
        if self.proc and self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def request(port, method, path, body=None, key=None, timeout=30, stream=False):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    c.request(method, path, json.dumps(body) if body is not None else None, headers)
    r = c.getresponse()
    if stream:
        return c, r
    data = r.read()
    c.close()
    try:
        parsed = json.loads(data) if data else None
    except ValueError:
        parsed = None
    return r.status, dict(r.getheaders()), parsed


# ---------------------------------------------------------------- the load


class Load:
    """Steady mixed load on both API instances, with every answer recorded."""

    def __init__(self, apis, key, with_models):
        self.apis, self.key, self.with_models = apis, key, with_models
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.events = []  # (time, kind, status)
        self.accepted = set()  # job ids answered 200/202
        self.sync_done = set()  # job ids whose sync call returned the finished job
        self.statuses = {}
        self.streams = {"started": 0, "completed": 0, "error_event": 0, "hung": 0, "broken": 0}
        self.threads = []

    def record(self, kind, status, job_id=None):
        with self.lock:
            self.events.append((time.monotonic(), kind, status))
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if job_id and status in (200, 202):
                self.accepted.add(job_id)

    def api(self):
        return random.choice(self.apis)

    def loop(self, fn, pause):
        while not self.stop.is_set():
            try:
                fn()
            except (OSError, http.client.HTTPException):
                self.record(fn.__name__, "conn_error")
                time.sleep(0.2)
            time.sleep(pause)

    def sync_echo(self):
        s, _, b = request(self.api().port, "POST", "/v1/jobs",
                          {"model": "echo", "mode": "sync", "timeout_ms": 20000,
                           "input": {"text": "chaos", "delay_ms": 50}}, self.key)
        self.record("sync_echo", s, b and b.get("id"))
        if s == 200 and b.get("status") == "succeeded":
            with self.lock:
                self.sync_done.add(b["id"])

    def async_echo(self):
        s, _, b = request(self.api().port, "POST", "/v1/jobs",
                          {"model": "echo", "mode": "async", "input": {"text": "chaos", "delay_ms": 100}}, self.key)
        self.record("async_echo", s, b and b.get("id"))

    def embeddings(self):
        s, _, _ = request(self.api().port, "POST", "/v1/embeddings",
                          {"model": "all-minilm-l6-v2", "input": ["a steady sentence", "and another"]}, self.key)
        self.record("embeddings", s)

    def stream_chat(self):
        with self.lock:
            self.streams["started"] += 1
        body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Count to twenty."}],
                "max_tokens": 24, "temperature": 0, "stream": True}
        t0 = time.monotonic()
        try:
            c, r = request(self.api().port, "POST", "/v1/chat/completions", body, self.key, timeout=60, stream=True)
        except (OSError, http.client.HTTPException):
            self.record("stream_chat", "conn_error")
            with self.lock:
                self.streams["broken"] += 1
            return
        self.record("stream_chat", r.status)
        if r.status != 200:
            r.read()
            c.close()
            return
        text = ""
        try:
            while True:
                chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1024)
                if not chunk:
                    break
                text += chunk.decode("utf-8", "replace")
                if "data: [DONE]" in text:
                    break
        except TimeoutError:
            with self.lock:
                self.streams["hung"] += 1
            c.close()
            return
        except (OSError, http.client.HTTPException):
            with self.lock:
                self.streams["broken"] += 1
            c.close()
            return
        c.close()
        kind = "completed" if "data: [DONE]" in text and '"error"' not in text else (
            "error_event" if '"error"' in text else "broken")
        if time.monotonic() - t0 > 60:
            kind = "hung"
        with self.lock:
            self.streams[kind] += 1

    def start(self):
        plan = [(self.sync_echo, 0.05)] * 3 + [(self.async_echo, 0.1)] * 2
        if self.with_models:
            plan += [(self.embeddings, 0.2), (self.stream_chat, 0.3)]
        for fn, pause in plan:
            t = threading.Thread(target=self.loop, args=(fn, pause), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(90)


class Probe:
    """A sync echo through each API instance every 200 ms: when the
    platform answers again after a fault."""

    def __init__(self, apis, key):
        self.apis, self.key = apis, key
        self.ok = {}
        self.stop = threading.Event()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while not self.stop.is_set():
            for a in list(self.apis):
                try:
                    s, _, b = request(a.port, "POST", "/v1/jobs",
                                      {"model": "echo", "mode": "sync", "timeout_ms": 3000, "input": {"text": "probe"}},
                                      self.key, timeout=5)
                    if s == 200 and b.get("status") == "succeeded":
                        self.ok[a.name] = time.monotonic()
                except (OSError, http.client.HTTPException):
                    pass
            time.sleep(0.2)

    def recovered_after(self, t, limit):
        """Seconds from t until every instance answered a probe, or None."""
        deadline = t + limit + 15
        while time.monotonic() < deadline:
            if all(self.ok.get(a.name, 0) > t for a in self.apis):
                return max(self.ok[a.name] for a in self.apis) - t
            time.sleep(0.1)
        return None


# ---------------------------------------------------------------- the run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", action="store_true", help="one fault of each kind")
    ap.add_argument("--no-models", action="store_true", help="echo only (no embeddings or chat load)")
    ap.add_argument("--report", default="chaos-report.json")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    ap.add_argument("--only", help="run only the faults whose name contains this")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("the chaos suite needs root (network namespaces, private servers)")
    with_models = not a.no_models and os.path.exists(os.path.join(ROOT, "models", "all-minilm-l6-v2", "model.safetensors"))
    base = tempfile.mkdtemp(prefix="maas-chaos-")
    os.chmod(base, 0o755)
    logs = os.path.join(base, "logs")
    os.makedirs(logs)
    cleanup = []
    services = []
    failures = []
    try:
        log("network namespaces")
        nets = Namespaces(3)
        cleanup.append(nets.close)
        log("private postgres, redis, rabbitmq")
        pg = Postgres(base, nets.host_addrs())
        cleanup.append(pg.close)
        redis = Redis(base, nets.host_addrs())
        cleanup.append(redis.close)
        rmq = RabbitMQ(base, nets.host_addrs())
        cleanup.append(rmq.close)
        sh(f"psql '{pg.url(db='postgres')}' -qX -c 'CREATE DATABASE maas'")

        secret = os.urandom(16).hex()

        def env_for(host):
            e = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
            e.update({
                "MAAS_DATABASE_URL": pg.url(host), "MAAS_REDIS_URL": f"redis://{host}:{REDIS_PORT}",
                "MAAS_AMQP_URL": f"amqp://guest:guest@{host}:{AMQP_PORT}/%2f", "MAAS_NAMESPACE": "chaos",
                "MAAS_JWT_SECRET": secret, "MAAS_LOG_FORMAT": "json", "MAAS_API_LISTEN": "127.0.0.1:0",
                "MAAS_SCHEDULER_LISTEN": "127.0.0.1:0", "MAAS_WORKER_LISTEN": "127.0.0.1:0",
                "MAAS_MODELS_DIR": os.path.join(ROOT, "models") if with_models else "/nonexistent",
                "MAAS_WORKER_HEARTBEAT_MS": "500", "MAAS_SCHEDULER_HEARTBEAT_TIMEOUT_MS": "5000",
                "MAAS_CHAT_MAX_SEQS": "4", "MAAS_API_WORKERS": "2",
                "RUST_LOG": "info,sqlx=warn,lapin=warn",
            })
            return e

        sh(f"{ROOT}/target/release/maas-api migrate", env=env_for("127.0.0.1"))
        log("2 api instances, 2 schedulers, 3 workers (each in its own namespace)")
        apis = [Service(f"api-{i}", "maas-api", env_for("127.0.0.1"), logs) for i in range(2)]
        scheds = [Service(f"scheduler-{i}", "maas-scheduler", env_for("127.0.0.1"), logs) for i in range(2)]
        # worker-1 reaches Postgres, Redis and RabbitMQ through relays that
        # can add latency; the others directly over their veth links.
        relay_host = f"{NET}.2.1"
        delays = [DelayProxy(relay_host, port + 10000, ("127.0.0.1", port))
                  for port in (PG_PORT, REDIS_PORT, AMQP_PORT)]
        cleanup.append(lambda: [d.close() for d in delays])
        worker_envs = [env_for(f"{NET}.{i + 1}.1") for i in range(3)]
        worker_envs[1].update({
            "MAAS_DATABASE_URL": f"postgres://postgres@{relay_host}:{PG_PORT + 10000}/maas",
            "MAAS_REDIS_URL": f"redis://{relay_host}:{REDIS_PORT + 10000}",
            "MAAS_AMQP_URL": f"amqp://guest:guest@{relay_host}:{AMQP_PORT + 10000}/%2f",
        })
        workers = [Service(f"worker-{i}", "maas-worker", worker_envs[i], logs, netns=ns)
                   for i, (ns, _, _, _) in enumerate(nets.names)]
        services = apis + scheds + workers
        cleanup.append(lambda: [s.stop() for s in services])
        want = ["echo"] + (["all-minilm-l6-v2", "smollm2-135m-instruct"] if with_models else [])
        deadline = time.monotonic() + 180
        while True:
            n = pg.psql("SELECT count(DISTINCT id) FROM workers WHERE status = 'alive'")
            if int(n or 0) >= 3:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not register")
            time.sleep(0.5)
        time.sleep(2.5)  # the api re-reads the served models every 2 s
        token = sh(f"{ROOT}/target/release/maas-api admin-token --sub chaos", env=env_for("127.0.0.1")).stdout.strip()

        def admin(method, path, body):
            c = http.client.HTTPConnection("127.0.0.1", apis[0].port, timeout=30)
            c.request(method, path, json.dumps(body), {"authorization": f"Bearer {token}", "content-type": "application/json"})
            r = c.getresponse()
            return json.loads(r.read())

        tenant = admin("POST", "/admin/v1/tenants", {"name": "chaos"})
        key = admin("POST", f"/admin/v1/tenants/{tenant['id']}/keys", {})["key"]
        probe_tenant = admin("POST", "/admin/v1/tenants", {"name": "probe"})
        probe_key = admin("POST", f"/admin/v1/tenants/{probe_tenant['id']}/keys", {})["key"]
        log("models served:", ", ".join(want))

        # Services must not exit on their own: watched all the time.
        unexpected = []
        expected_down = set()

        def watch():
            while not stop_watch.is_set():
                for s in services:
                    if s.name not in expected_down and not s.running():
                        unexpected.append((s.name, s.proc.returncode))
                        expected_down.add(s.name)
                time.sleep(0.5)

        stop_watch = threading.Event()
        threading.Thread(target=watch, daemon=True).start()

        load = Load(apis, key, with_models)
        probe = Probe(apis, probe_key)
        load.start()
        time.sleep(5)

        def kill_and_restart(s, down_s=2.0):
            expected_down.add(s.name)
            s.kill9()
            time.sleep(down_s)
            t = time.monotonic()
            s.restart()
            expected_down.discard(s.name)
            return t

        def active_scheduler():
            for s in scheds:
                try:
                    _, _, b = request(s.port, "GET", "/readyz")
                    if b and b.get("role") == "active":
                        return s
                except OSError:
                    pass
            return None

        def f_worker(i):
            def run():
                return kill_and_restart(workers[i])
            return (f"kill -9 worker-{i}", run)

        def f_scheduler():
            def run():
                s = active_scheduler() or scheds[0]
                return kill_and_restart(s)
            return ("kill -9 the active scheduler", run)

        def f_rabbit():
            def run():
                rmq.stop()
                time.sleep(5)
                rmq.start()
                return rmq.listening_at or time.monotonic()
            return ("restart RabbitMQ", run)

        def f_pg_restart():
            def run():
                pg.stop_fast()
                time.sleep(5)
                pg.start()  # returns once it accepts connections
                return time.monotonic()
            return ("restart Postgres (fast shutdown)", run)

        def f_pg_kill():
            def run():
                pg.kill9_all()
                time.sleep(3)
                pg.start()  # crash recovery, then it accepts connections
                return time.monotonic()
            return ("kill -9 every Postgres process", run)

        def f_redis():
            def run():
                redis.stop()
                time.sleep(5)
                redis.start()
                return time.monotonic()
            return ("restart Redis", run)

        def f_api():
            def run():
                return kill_and_restart(apis[1])
            return ("kill -9 api-1", run)

        def f_delay():
            def run():
                for d in delays:
                    d.delay_s = 0.2
                time.sleep(20)
                for d in delays:
                    d.delay_s = 0.0
                return time.monotonic()
            return ("200 ms delay to worker-1 for 20 s", run)

        def f_cut():
            def run():
                nets.cut(2, True)
                time.sleep(20)
                t = time.monotonic()
                nets.cut(2, False)
                return t
            return ("worker-2 cut off for 20 s", run)

        faults = ([f_worker(0)] if a.short else [f_worker(0), f_worker(1), f_worker(2)])
        faults += [f_scheduler(), f_rabbit(), f_pg_restart(), f_pg_kill(), f_redis(), f_api(), f_delay(), f_cut()]
        if a.only:
            faults = [f for f in faults if a.only in f[0]]
        gap = 6 if a.short else 12
        report = {"faults": []}
        for name, run in faults:
            log("fault:", name)
            t_start = time.monotonic()
            t_back = run()
            log(f"  back at {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}")
            rec = probe.recovered_after(t_back, RECOVERY_LIMIT_S)
            with load.lock:
                w503 = [t for (t, _, s) in load.events if s == 503 and t >= t_start]
            window = (max(w503) - min(w503)) if w503 else 0.0
            row = {"fault": name, "n503": len(w503), "window_503_s": round(window, 2),
                   "recovery_s": None if rec is None else round(rec, 2)}
            report["faults"].append(row)
            log(f"  {len(w503)} answers 503 over {window:.1f} s; recovered {row['recovery_s']} s after the return")
            if rec is None or rec > RECOVERY_LIMIT_S:
                failures.append(f"{name}: not recovered within {RECOVERY_LIMIT_S} s")
            time.sleep(gap)

        log("stopping the load; draining")
        load.finish()
        probe.stop.set()
        # Every accepted job must reach a final state.
        ids = sorted(load.accepted)
        deadline = time.monotonic() + 90
        while True:
            pending = int(pg.psql(
                "SELECT count(*) FROM jobs WHERE status IN ('queued','dispatched','running') AND tenant_id = '%s'" % tenant["id"]))
            if pending == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        stop_watch.set()
        rows = {}
        if ids:
            arr = "{" + ",".join(ids) + "}"
            out = pg.psql(f"SELECT id, status, (SELECT count(*) FROM usage_records u WHERE u.job_id = j.id) FROM jobs j WHERE id = ANY('{arr}'::uuid[])")
            for line in out.splitlines():
                jid, status, n = line.split("|")
                rows[jid] = (status, int(n))
        missing = [j for j in ids if j not in rows]
        unfinished = [j for j, (s, _) in rows.items() if s in ("queued", "dispatched", "running")]
        succeeded_once = sum(1 for s, n in rows.values() if s == "succeeded" and n == 1)
        failed = {s: sum(1 for st, _ in rows.values() if st == s) for s in ("failed", "cancelled", "expired")}
        dup = int(pg.psql("SELECT count(*) FROM (SELECT job_id FROM usage_records GROUP BY job_id HAVING count(*) > 1) d"))
        usage_without_success = int(pg.psql(
            "SELECT count(*) FROM usage_records u JOIN jobs j ON j.id = u.job_id WHERE j.status <> 'succeeded'"))
        alive = all(s.running() for s in services)
        report["lost_ids"] = (missing + unfinished)[:20]
        report.update({
            "accepted": len(ids), "finished_exactly_once": succeeded_once, "lost": len(missing) + len(unfinished),
            "ended_otherwise": failed, "usage_duplicated": dup + usage_without_success,
            "responses": {str(k): v for k, v in sorted(load.statuses.items(), key=lambda kv: str(kv[0]))},
            "responses_500": load.statuses.get(500, 0), "streams": load.streams,
            "unexpected_exits": unexpected, "all_alive_at_end": alive,
            "restarted_by_the_suite": {s.name: s.restarts for s in services if s.restarts},
        })
        if report["lost"]:
            failures.append(f"{report['lost']} accepted jobs lost")
        if report["usage_duplicated"]:
            failures.append(f"{report['usage_duplicated']} usage records duplicated or for unfinished jobs")
        if report["responses_500"]:
            failures.append(f"{report['responses_500']} responses 500")
        if load.streams["hung"]:
            failures.append(f"{load.streams['hung']} streams hung")
        if unexpected or not alive:
            failures.append(f"services exited on their own: {unexpected}")
        report["failures"] = failures
        with open(a.report, "w") as f:
            json.dump(report, f, indent=2)
        print(json.dumps({k: v for k, v in report.items() if k != "faults"}))
        for r in report["faults"]:
            print(json.dumps(r))
    except Exception as e:  # noqa: BLE001 - the report says what broke
        failures.append(f"the suite itself failed: {e!r}")
        log("error:", repr(e))
    finally:
        for c in reversed(cleanup):
            try:
                c()
            except Exception as e:  # noqa: BLE001
                log("cleanup:", repr(e))
        if a.keep or failures:
            log("logs in", logs)
        else:
            shutil.rmtree(base, ignore_errors=True)
    if failures:
        log("FAILED:", "; ".join(failures))
        sys.exit(1)
    log("chaos suite passed")


if __name__ == "__main__":
    main()
