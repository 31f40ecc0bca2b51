"""docker/compose.yaml's topology without containers: PostgreSQL, a Prefect server on it, a standalone
`dask scheduler` with two `dask worker --resources GPU=1`, and a Prefect process worker, each started
with the command and environment of its compose service (read from the file, so drift is caught).

Only the network differs: service host names and container ports become 127.0.0.1 and free ports. The
demo deployment then runs through the process worker with VIEWNETI_DASK_ADDRESS pointing at the
scheduler: the run must complete, both Dask workers must have run GPU tasks, and the run must be
recorded in PostgreSQL. Needs the PostgreSQL server binaries (.ci/run installs Debian's package).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from fixtures.pipeline import small_benchmark_config

from flows.local_services import api_healthy, free_port, port_in_use
from tasks.runtime import read_ledger

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "compose.yaml"
BIN = Path(sys.executable).parent
GPU_TASKS = {"pretrain", "fit", "infer", "evaluate"}


def postgres_bin() -> Path | None:
    """Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path else None


# ---- compose.yaml, translated to one host ------------------------------------------------------------


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} substitution."""
    def substitute(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if variables.get(name):
            return variables[name]
        if op == ":?":
            raise AssertionError(f"docker/compose.yaml needs {name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", substitute, value)


def env_example() -> dict[str, str]:
    lines = (REPO / "docker" / "env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def localize(text: str, ports: dict[int, int]) -> str:
    """Service host names and container ports -> 127.0.0.1 and this host's free ports."""
    text = text.replace("0.0.0.0", "127.0.0.1")
    text = re.sub(r"--port (\d+)", lambda m: f"--port {ports[int(m.group(1))]}", text)
    text = re.sub(r"(?:\b(?:postgres|prefect-server|dask-scheduler|127\.0\.0\.1))?:(5432|4200|8786|8787)\b",
                  lambda m: f"127.0.0.1:{ports[int(m.group(1))]}", text)
    assert not re.search(r"\b(prefect-server|dask-scheduler)\b|@postgres\b", text), \
        f"a compose host name this test does not map to 127.0.0.1: {text}"
    return text


def compose_services(variables: dict[str, str], ports: dict[int, int]) -> dict[str, dict]:
    """{service: {"command": ..., "env": {...}}}, variables substituted and the network localized."""
    def translate(value) -> str:
        return localize(interpolate(str(value), variables), ports)

    services = yaml.safe_load(COMPOSE.read_text())["services"]  # anchors and << merges resolved by PyYAML
    return {name: {"command": translate(spec["command"]) if spec.get("command") else None,
                   "env": {key: translate(value) for key, value in (spec.get("environment") or {}).items()}}
            for name, spec in services.items()}


# ---- processes ---------------------------------------------------------------------------------------


class Services:
    """The started services, each in its own process group, all stopped (children included) at close."""

    def __init__(self, root: Path):
        self.root = root
        self.processes: dict[str, subprocess.Popen] = {}

    def env(self, service: str, extra: dict[str, str]) -> dict[str, str]:
        """A container's view: nothing of this session's Prefect/Dask settings, its own PREFECT_HOME."""
        inherited = ("PREFECT_", "VIEWNETI_DASK_", "DASK_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
        home = self.root / "home" / service
        home.mkdir(parents=True, exist_ok=True)
        return env | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PREFECT_HOME": str(home),
                      "PYTHONUNBUFFERED": "1"} | extra

    def start(self, service: str, command: str, env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log(service), "wb")  # noqa: SIM115 - handed to the child
        try:
            process = subprocess.Popen(shlex.split(command), cwd=REPO, env=self.env(service, env),
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        finally:
            log.close()
        self.processes[service] = process
        return process

    def log(self, service: str) -> Path:
        return self.root / f"{service}.log"

    def tail(self, service: str, chars: int = 3000) -> str:
        path = self.log(service)
        text = path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"
        return f"--- {service} ---\n{text}"

    def alive(self) -> list[psutil.Process]:
        """Processes still in the services' process groups."""
        groups = {process.pid for process in self.processes.values()}
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(process.pid) in groups and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
        return found

    def close(self) -> None:
        for process in reversed(self.processes.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in reversed(self.processes.values()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # stragglers: nannies' workers, flow runs
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_until(check, what: str, timeout_s: float, services: Services, *logs: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        for name in logs:
            if services.processes[name].poll() is not None:
                code = services.processes[name].returncode
                pytest.fail(f"{name} exited with {code}\n{services.tail(name)}")
        time.sleep(0.5)
    pytest.fail(f"{what} not ready within {timeout_s:.0f} s\n" + "\n".join(services.tail(n) for n in logs))


class Postgres:
    """A throwaway cluster: initdb + pg_ctl, TCP on 127.0.0.1 only, like compose's `postgres` service
    (POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB, password authentication)."""

    def __init__(self, bin_dir: Path, user: str, password: str, db: str):
        self.bin, self.user, self.password, self.db = bin_dir, user, password, db
        self.port = free_port()
        # not under pytest's tmp dir: that one is private to this user, and the server may run as `postgres`
        self.dir = Path(tempfile.mkdtemp(prefix="viewneti-pg-"))
        self.data = self.dir / "data"
        self.as_owner: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self.as_owner = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres")
        self.started = False

    def run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.as_owner, *args], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PGPASSWORD=self.password), **kwargs)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    def start(self) -> Postgres:
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_owner:
            shutil.chown(pwfile, "postgres")
        self.run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                 "--auth=scram-sha-256", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        self.started = True
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
                 "-o", options, "-w", "-t", "60", "start")
        self.run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                 self.db)
        return self

    def stop(self) -> None:
        if self.started:
            subprocess.run([*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                            "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)

    def query(self, sql: str, *args):
        import asyncpg  # Prefect's PostgreSQL driver

        async def fetch():
            connection = await asyncpg.connect(host="127.0.0.1", port=self.port, user=self.user,
                                               password=self.password, database=self.db)
            try:
                return await connection.fetch(sql, *args)
            finally:
                await connection.close()

        return asyncio.run(fetch())


def descendants(process: subprocess.Popen) -> set[int]:
    return {p.pid for p in psutil.Process(process.pid).children(recursive=True)}


# ---- the test ------------------------------------------------------------------------------------------


def test_demo_deployment_runs_on_the_compose_topology(synthetic_archives, tiny_model_dir, pretrained_run,
                                                      tmp_path):
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (pg_ctl, initdb) not found under /usr/lib/postgresql/*/bin "
                    "or on PATH: apt-get install postgresql (.ci/run does)")
    ports = {5432: 0, 4200: free_port(), 8786: free_port(), 8787: free_port()}
    variables = env_example() | {"POSTGRES_PASSWORD": secrets.token_hex(8),
                                 "PREFECT_API_AUTH_STRING": f"admin:{secrets.token_hex(8)}",
                                 "PREFECT_PORT": str(ports[4200]), "DASK_DASHBOARD_PORT": str(ports[8787])}
    variables["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{ports[4200]}/api"
    postgres_env = yaml.safe_load(COMPOSE.read_text())["services"]["postgres"]["environment"]
    password = interpolate(postgres_env["POSTGRES_PASSWORD"], variables)
    database = Postgres(bin_dir, postgres_env["POSTGRES_USER"], password, postgres_env["POSTGRES_DB"])
    ports[5432] = database.port
    compose = compose_services(variables, ports)
    auth = variables["PREFECT_API_AUTH_STRING"]
    services = Services(tmp_path)
    try:
        database.start()
        server = compose["prefect-server"]
        assert server["env"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith(
            f"postgresql+asyncpg://{database.user}:{database.password}@127.0.0.1:{database.port}/")
        services.start("prefect-server", server["command"], server["env"])
        api = compose["prefect-worker"]["env"]["PREFECT_API_URL"]
        wait_until(lambda: api_healthy(api, auth_string=auth), "the Prefect server", 240, services,
                   "prefect-server")

        scheduler = compose["dask-scheduler"]
        services.start("dask-scheduler", scheduler["command"], scheduler["env"])
        wait_until(lambda: port_in_use(ports[8786]), "the Dask scheduler", 120, services, "dask-scheduler")
        for gpu in ("dask-gpu-0", "dask-gpu-1"):
            assert "--resources GPU=1" in compose[gpu]["command"]
            services.start(gpu, compose[gpu]["command"], compose[gpu]["env"])

        worker_env = compose["prefect-worker"]["env"]
        assert worker_env["VIEWNETI_DASK_ADDRESS"] == f"tcp://127.0.0.1:{ports[8786]}"
        # the deploy step, in a prefect-worker "container" as compose.yaml's header runs `prefect deploy`
        deploy = subprocess.run([sys.executable, "-m", "viewneti_cli.deploy"], cwd=REPO, capture_output=True,
                                text=True, env=services.env("deploy", worker_env), timeout=300)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        services.start("prefect-worker", compose["prefect-worker"]["command"], worker_env)

        config = small_benchmark_config(tmp_path / "run", synthetic_archives, tiny_model_dir, pretrained_run,
                                        name="topology-bench", test_scans=[21, 114])
        started = subprocess.run([str(BIN / "prefect"), "deployment", "run", "dtu-benchmark/demo", "--params",
                                  json.dumps({"config": config})], cwd=REPO, capture_output=True, text=True,
                                 env=services.env("cli", worker_env), timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)

        def final_state() -> str | None:  # from PostgreSQL: the server keeps its state there, nowhere else
            rows = database.query("SELECT state_type FROM flow_run WHERE id = $1::uuid", run_id)
            state = rows[0]["state_type"] if rows else None
            return state if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None

        wait_until(final_state, "the demo flow run's final state", 600, services,
                   "prefect-worker", "dask-gpu-0", "dask-gpu-1", "dask-scheduler", "prefect-server")
        assert final_state() == "COMPLETED", "\n".join(services.tail(n) for n in services.processes)

        deployment = database.query("SELECT d.name FROM flow_run r JOIN deployment d "
                                    "ON d.id = r.deployment_id WHERE r.id = $1::uuid", run_id)
        assert [r["name"] for r in deployment] == ["demo"]
        entries = [e for e in read_ledger(tmp_path / "run" / "ledger") if e["task"] in GPU_TASKS]
        assert {e["worker_name"] for e in entries} == {"gpu-0", "gpu-1"}, entries
        # ...as the standalone `dask worker` processes (their nannies' children), not a local cluster
        for name in ("gpu-0", "gpu-1"):
            pids = {e["pid"] for e in entries if e["worker_name"] == name}
            assert pids <= descendants(services.processes[f"dask-{name}"]), (name, pids)
        assert {e["item"] for e in entries if e["task"] == "evaluate"} == {"scan21-1view", "scan114-1view"}
        # the Dask workers' task runs reached PostgreSQL via the server (their states arrive asynchronously)
        done = {(e["item"], e["task"]) for e in entries if e["status"] == "completed"}

        def task_runs_recorded() -> bool:
            rows = database.query("SELECT count(*) AS n FROM task_run WHERE flow_run_id = $1::uuid "
                                  "AND state_type = 'COMPLETED'", run_id)
            return rows[0]["n"] >= len(done)

        wait_until(task_runs_recorded, f"{len(done)} completed task runs in PostgreSQL", 60, services,
                   "prefect-server")
        assert (tmp_path / "run" / "report" / "summary.parquet").is_file()
    finally:
        services.close()
        database.stop()
    assert not services.alive(), f"processes left running: {[p.cmdline() for p in services.alive()]}"
    assert not port_in_use(database.port), "PostgreSQL still listens after pg_ctl stop"
