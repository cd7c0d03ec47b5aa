"""PostgreSQL and Redis for the production-shaped Airflow: real servers, loopback only.

Both come from the distribution's packages (installed with apt-get when missing and we are
root) and run as child processes with their data under the Airflow home, so a test bed never
touches a system database and leaves nothing running once stopped. PostgreSQL refuses to run
as root: as root, its server runs as the package's ``postgres`` user.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

APT_PACKAGES = {"postgres": "postgresql", "redis": "redis-server"}


class ServiceError(RuntimeError):
    """A server of the test bed could not be installed or started; the message says how."""


@dataclass(frozen=True)
class Services:
    """Where the metadata database and the Celery broker of one Airflow listen."""

    home: Path
    postgres_port: int
    redis_port: int
    password: str

    @property
    def sql_alchemy_conn(self) -> str:
        return (f"postgresql+psycopg2://airflow:{self.password}@127.0.0.1:"
                f"{self.postgres_port}/airflow")

    @property
    def result_backend(self) -> str:
        return f"db+postgresql://airflow:{self.password}@127.0.0.1:{self.postgres_port}/airflow"

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def pgdata(self) -> Path:
        """Outside the home: as root the server runs as ``postgres``, which cannot enter a
        home made private (mkdtemp, /root); keyed by the home, so a restart finds it."""
        key = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"skyshare-postgres-{key}" / "data"

    @classmethod
    def load_or_new(cls, home: Path) -> Services:
        """The servers' ports and password are kept in the home, so a restart reuses them."""
        saved = home / "services.json"
        home.mkdir(parents=True, exist_ok=True)
        if saved.exists():
            return cls(home=home, **json.loads(saved.read_text()))
        postgres = free_port()
        made = cls(home, postgres, free_port(avoid=postgres), secrets.token_urlsafe(18))
        write_private(saved, json.dumps({k: v for k, v in asdict(made).items() if k != "home"}))
        return made

    def start(self) -> None:
        ensure_installed()
        self._start_postgres()
        self._start_redis()

    def stop(self, purge: bool = False) -> None:
        """Stop both servers; purge: also delete the database (a throwaway test bed)."""
        pid_file = self.home / "redis.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            if b"redis-server" in _cmdline(pid):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 15  # a restart must not find it still there
                while b"redis-server" in _cmdline(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
            pid_file.unlink(missing_ok=True)
        if (self.pgdata / "postmaster.pid").exists():
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w",
                          "stop"], check=False)
        if purge:
            shutil.rmtree(self.pgdata.parent, ignore_errors=True)

    # -- PostgreSQL --------------------------------------------------------------------------
    def _start_postgres(self) -> None:
        if _answers(self.postgres_port):
            self._create_database()  # also where an earlier start stopped before it
            return
        root = self.pgdata.parent
        root.mkdir(parents=True, exist_ok=True)
        if _is_root():
            shutil.chown(root, "postgres", "postgres")
        if not (self.pgdata / "PG_VERSION").exists():
            pwfile = root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if _is_root():
                shutil.chown(pwfile, "postgres", "postgres")
            pwfile.chmod(0o600)
            _as_postgres([_pg_bin("initdb"), "-D", str(self.pgdata), "-U", "airflow",
                          "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"])
            pwfile.unlink()
        options = (f"-p {self.postgres_port} -c listen_addresses=127.0.0.1 "
                   "-c unix_socket_directories='' -c max_connections=300 -c fsync=off")
        log = root / "server.log"
        started = _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(log), "-o",
                                options, "-w", "-t", "60", "start"], check=False)
        if started.returncode != 0:
            raise ServiceError(f"PostgreSQL did not start on 127.0.0.1:{self.postgres_port} "
                               f"({started.stdout.strip()[-300:]}); see {log}")
        self._create_database()

    def _create_database(self) -> None:
        env = {**os.environ, "PGPASSWORD": self.password}
        base = [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.postgres_port), "-U", "airflow",
                "-d", "postgres", "-tAc"]  # psql: PostgreSQL's client, always with the server
        found = subprocess.run([*base, "SELECT 1 FROM pg_database WHERE datname = 'airflow'"],
                               env=env, capture_output=True, text=True, timeout=30)
        if found.returncode != 0:
            raise ServiceError(f"PostgreSQL on 127.0.0.1:{self.postgres_port} refused a query: "
                               f"{found.stderr.strip()}")
        if found.stdout.strip() != "1":
            made = subprocess.run([*base, "CREATE DATABASE airflow"], env=env,
                                  capture_output=True, text=True, timeout=30)
            if made.returncode != 0:
                raise ServiceError(f"could not create the database 'airflow' on 127.0.0.1:"
                                   f"{self.postgres_port}: {made.stderr.strip()}")

    # -- Redis -------------------------------------------------------------------------------
    def _start_redis(self) -> None:
        if _answers(self.redis_port):
            return
        data = self.home / "redis"
        data.mkdir(exist_ok=True)
        log = open(self.home / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            [_binary("redis-server"), "--bind", "127.0.0.1", "--port", str(self.redis_port),
             "--dir", str(data), "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        (self.home / "redis.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + 30
        while not _answers(self.redis_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"redis-server did not start on 127.0.0.1:{self.redis_port}; "
                                   f"see {self.home / 'redis.log'}")
            time.sleep(0.1)


def ensure_installed() -> None:
    """Install PostgreSQL and Redis from the distribution when missing (root + apt only)."""
    missing = [pkg for name, pkg in APT_PACKAGES.items() if not _found(name)]
    if not missing:
        return
    if not (_is_root() and shutil.which("apt-get")):
        raise ServiceError(f"the production-shaped Airflow needs {' and '.join(missing)}: "
                           f"install them (sudo apt-get install {' '.join(missing)}) and retry")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"`{' '.join(cmd)}` took over 900 s; install {' '.join(missing)} "
                               "by hand and retry") from None
        if done.returncode != 0:
            raise ServiceError(f"`{' '.join(cmd)}` failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-800:]}")
    still = [pkg for name, pkg in APT_PACKAGES.items() if not _found(name)]
    if still:
        raise ServiceError(f"apt-get installed {' '.join(missing)} but {' '.join(still)} is "
                           "still not found")


def _found(name: str) -> bool:
    return bool(_pg_bins()) if name == "postgres" else bool(shutil.which("redis-server"))


def _pg_bins() -> list[str]:
    """Debian keeps initdb/pg_ctl out of PATH, under /usr/lib/postgresql/<major>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return [os.path.dirname(found[-1])]
    initdb = shutil.which("initdb")
    return [os.path.dirname(initdb)] if initdb else []


def _pg_bin(name: str) -> str:
    bins = _pg_bins()
    if not bins:
        raise ServiceError("PostgreSQL's server programs (initdb, pg_ctl) are not installed: "
                           "sudo apt-get install postgresql")
    return os.path.join(bins[0], name)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise ServiceError(f"{name} is not installed: sudo apt-get install "
                           f"{APT_PACKAGES.get('redis', name)}")
    return path


def _is_root() -> bool:
    return os.geteuid() == 0


def _runuser() -> str:
    """util-linux's runuser: in /usr/sbin or /sbin, which a non-login PATH may lack."""
    found = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), None)
    if found is None:
        raise ServiceError("running as root, PostgreSQL is started as 'postgres' with runuser, "
                           "which is not installed: apt-get install util-linux")
    return found


def _as_postgres(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if _is_root():
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceError("running as root, PostgreSQL needs the 'postgres' user that "
                               "its package creates: apt-get install postgresql") from None
        cmd = [_runuser(), "-u", "postgres", "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
    if check and done.returncode != 0:
        raise ServiceError(f"`{' '.join(cmd)}` failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-800:]}")
    return done


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def write_private(path: Path, text: str) -> None:
    """Passwords and keys: readable by the owner only from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port(avoid: int = 0) -> int:
    """A port free on 127.0.0.1 now (another process may still take it before we bind)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != avoid:
            return port
