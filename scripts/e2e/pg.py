"""A throwaway PostgreSQL server for the cluster tests and benchmarks (SPEC §12).

PostgreSQL refuses to run as root, so when this runs as root the server programs (initdb,
pg_ctl, postgres) run as the Debian `postgres` system user through `runuser`; the client
(psql) runs as the caller. The cluster lives in one temporary folder: `data/` (owned by
postgres), `sock/` (its unix socket), `port` (the TCP port on 127.0.0.1, kept so that a
restart uses the same one) and `log`. Authentication is `trust`, the superuser is `herald`.

    server = PostgresServer(fsync=False).start()   # initdb on first start, CREATE DATABASE herald
    server.url()                                    # postgres://herald@127.0.0.1:PORT/herald
    server.psql("SELECT 1")                         # stdout of psql -At
    server.stop(); server.start()                   # same port, same data
    server.cleanup()                                # stop and remove the folder

Every step is idempotent and bounded in time; an atexit hook stops (and, for folders this
module created, removes) every server started by this process.

Command line, for shell scripts (the benchmark):
    python3 scripts/e2e/pg.py start --dir D [--fsync]   # prints the URL, leaves it running
    python3 scripts/e2e/pg.py stop --dir D
    python3 scripts/e2e/pg.py psql --dir D "SQL"
"""
import argparse
import atexit
import glob
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SYSTEM_USER = "postgres"
SUPERUSER = "herald"
DEFAULT_DB = "herald"
STEP_TIMEOUT = 60  # seconds: the bound of every external command


def _bin_dir():
    """The bin folder of the highest PostgreSQL version installed (Debian layout)."""
    candidates = []
    for path in glob.glob("/usr/lib/postgresql/*/bin"):
        version = os.path.basename(os.path.dirname(path))
        key = tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)
        if os.path.exists(os.path.join(path, "postgres")):
            candidates.append((key, path))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                           "(apt-get install postgresql)")
    return max(candidates)[1]


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port():
    """A free TCP port on 127.0.0.1 *below* the ephemeral range: the server is stopped and
    started again on it (and a test may pick it well before starting), and in the meantime
    no outgoing connection on this machine can take it as its source port (nor can a client
    retrying against it connect to itself, which Linux allows when source = destination)."""
    low, _ = _ephemeral_range()
    rng = random.Random()
    start = 10000 if low > 11000 else 1024
    for _ in range(200):
        port = rng.randrange(start, max(start + 1, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # fall back to any free port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_free_port = free_port


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


_live = []  # servers started by this process, stopped at exit


def _stop_all_at_exit():
    for server in list(_live):
        try:
            if server.owns_dir:
                server.cleanup()
            else:
                server.stop()
        except Exception as error:  # never mask the real exit status
            print(f"pg.py: stopping {server.dir} at exit failed: {error}", file=sys.stderr)


atexit.register(_stop_all_at_exit)


class PostgresServer:
    def __init__(self, dir=None, fsync=False, port=None, max_connections=200):
        self.bin = _bin_dir()
        self.owns_dir = dir is None
        self.dir = os.path.abspath(dir) if dir else tempfile.mkdtemp(prefix="herald-pg-")
        os.makedirs(self.dir, exist_ok=True)
        self.as_root = os.geteuid() == 0
        self.port_file = os.path.join(self.dir, "port")
        self.home = self._home()
        self.data = os.path.join(self.home, "data")
        self.sock = os.path.join(self.home, "sock")
        self.log = os.path.join(self.home, "log")
        self.fsync = fsync
        self.max_connections = max_connections
        self.port = port or self._saved_port()

    # -- helpers ---------------------------------------------------------------------------

    def _home(self):
        """Where data/, sock/ and log live: DIR itself when the postgres user can reach it
        (and the socket path stays short), else a folder under the system temp dir whose
        path DIR/home records (e.g. DIR under a 0700 `mktemp -d`)."""
        pointer = os.path.join(self.dir, "home")
        try:
            with open(pointer) as f:
                home = f.read().strip()
            if home:
                return home
        except OSError:
            pass
        if self._reachable(self.dir) and len(self.dir) < 70:
            return self.dir
        home = tempfile.mkdtemp(prefix="herald-pg-home-")
        with open(pointer, "w") as f:
            f.write(home)
        return home

    def _reachable(self, path):
        """True when the server's user can enter every folder on the way to path."""
        if not self.as_root:
            return True
        parts = os.path.abspath(path).split(os.sep)
        for i in range(1, len(parts)):
            folder = os.sep + os.path.join(*parts[1:i]) if i > 1 else os.sep
            mode = os.stat(folder).st_mode
            if not mode & 0o001:
                return False
        return True

    def _saved_port(self):
        try:
            with open(self.port_file) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _server_cmd(self, program, *args):
        command = [os.path.join(self.bin, program), *args]
        if self.as_root:
            return ["runuser", "-u", SYSTEM_USER, "--", *command]
        return command

    def _run(self, command, check=True, timeout=STEP_TIMEOUT):
        # cwd: a folder the postgres user can enter (it warns about an unreadable cwd otherwise).
        result = subprocess.run(command, cwd=self.home, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC"})
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}\n{self._log_tail()}")
        return result

    def _log_tail(self, lines=30):
        try:
            with open(self.log, errors="replace") as f:
                return "log tail:\n" + "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def _chown(self, path):
        if self.as_root:
            shutil.chown(path, SYSTEM_USER, SYSTEM_USER)

    def initialized(self):
        return os.path.exists(os.path.join(self.data, "PG_VERSION"))

    def _postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return None

    def running(self):
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    # -- lifecycle -------------------------------------------------------------------------

    def _initdb(self):
        # The folder itself must be traversable by postgres (mkdtemp makes it 0700 root).
        self._chown(self.home)
        os.chmod(self.home, 0o755)
        if os.path.exists(self.data):
            shutil.rmtree(self.data)  # a half-made data dir from an interrupted initdb
        os.makedirs(self.data, mode=0o700)
        self._chown(self.data)
        self._run(self._server_cmd("initdb", "-D", self.data, "--auth=trust", "-U", SUPERUSER,
                                   "-E", "UTF8", "--locale=C", "--no-instructions"), timeout=120)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\ninclude_if_exists = 'herald_test.conf'\n")

    def _write_settings(self):
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sock}'",
            "max_connections": str(self.max_connections),
            "fsync": "on" if self.fsync else "off",
            # With fsync off nothing is durable anyway: skip the commit flush as well.
            "synchronous_commit": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
            "log_connections": "off",
            "log_disconnections": "off",
        }
        path = os.path.join(self.data, "herald_test.conf")
        with open(path, "w") as f:
            for key, value in settings.items():
                f.write(f"{key} = {value}\n")
        self._chown(path)

    def start(self, timeout=30):
        """Starts the server (initdb on first start), waits until it accepts connections and
        creates the database `herald`. Idempotent: a running server is left as it is."""
        if self not in _live:
            _live.append(self)
        if not self.initialized():
            self._initdb()
        if self.running():
            self.wait_ready(timeout)
            return self
        os.makedirs(self.sock, exist_ok=True)
        self._chown(self.sock)
        if not os.path.exists(self.log):
            open(self.log, "w").close()
        self._chown(self.log)
        first = self.port is None
        for attempt in range(5 if first else 1):
            if first:
                self.port = _free_port()
            self._write_settings()
            result = self._run(self._server_cmd("pg_ctl", "start", "-D", self.data, "-l", self.log,
                                                "-w", "-t", str(timeout)),
                               check=False, timeout=timeout + 15)
            if result.returncode == 0:
                break
            self._kill_leftover()
            if not first or attempt == 4:
                raise RuntimeError(f"pg_ctl start failed ({result.returncode}) on port {self.port}:\n"
                                   f"{result.stdout}\n{result.stderr}\n{self._log_tail()}")
            # Most likely someone took the port between our probe and postgres' bind: retry.
        with open(self.port_file, "w") as f:
            f.write(str(self.port))
        self.wait_ready(timeout)
        self.create_database(DEFAULT_DB)
        return self

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            result = self._run([os.path.join(self.bin, "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                                "-U", SUPERUSER, "-d", "postgres", "-t", "2"], check=False, timeout=10)
            if result.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL on port {self.port} not ready within {timeout} s\n{self._log_tail()}")

    def stop(self, timeout=30):
        """Fast shutdown (open sessions are terminated), waits until the server is gone.
        Idempotent: a stopped server stays stopped."""
        if not self.initialized() or not self.running():
            return
        result = self._run(self._server_cmd("pg_ctl", "stop", "-D", self.data, "-m", "fast", "-w",
                                            "-t", str(timeout)), check=False, timeout=timeout + 15)
        if result.returncode != 0 and self.running():
            self._run(self._server_cmd("pg_ctl", "stop", "-D", self.data, "-m", "immediate", "-w",
                                       "-t", "10"), check=False, timeout=25)
        self._kill_leftover()
        deadline = time.time() + 10
        while self.port and _port_open(self.port) and time.time() < deadline:
            time.sleep(0.05)

    def _kill_leftover(self):
        """Last resort: SIGKILL a postmaster that would not stop."""
        pid = self._postmaster_pid()
        if pid is None or not self.running():
            return
        deadline = time.time() + 5
        while self.running() and time.time() < deadline:
            time.sleep(0.1)
        if self.running():
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.5)
            try:
                os.remove(os.path.join(self.data, "postmaster.pid"))
            except OSError:
                pass

    def restart(self):
        self.stop()
        return self.start()

    def cleanup(self):
        """Stops the server and removes its folder."""
        try:
            self.stop()
        finally:
            if self.home != self.dir:
                shutil.rmtree(self.home, ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)
            if self in _live:
                _live.remove(self)

    # -- SQL -------------------------------------------------------------------------------

    def url(self, db=DEFAULT_DB):
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.port}/{db}"

    def psql(self, sql, db=DEFAULT_DB, timeout=STEP_TIMEOUT, check=True):
        """Runs SQL with psql (unaligned, tuples only: one row per line, columns separated by
        '|') and returns its stdout."""
        result = self._run([os.path.join(self.bin, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", db, "-c", sql],
                           check=check, timeout=timeout)
        return result.stdout

    def create_database(self, name):
        """CREATE DATABASE name unless it exists."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"bad database name {name!r}")
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'", db="postgres").strip()
        if not exists:
            self.psql(f'CREATE DATABASE "{name}"', db="postgres")
        return self.url(name)

    def drop_database(self, name, force=True):
        self.psql(f'DROP DATABASE IF EXISTS "{name}"' + (" WITH (FORCE)" if force else ""), db="postgres")


def main(argv=None):
    parser = argparse.ArgumentParser(description="A throwaway PostgreSQL server for Herald's cluster tests.")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start (initdb on first use), print the URL, leave it running")
    start.add_argument("--dir", required=True)
    start.add_argument("--fsync", action="store_true", help="keep fsync on (benchmarks); off by default")
    stop = sub.add_parser("stop", help="stop the server of DIR (fast shutdown)")
    stop.add_argument("--dir", required=True)
    stop.add_argument("--remove", action="store_true", help="also remove DIR")
    url = sub.add_parser("url", help="print the URL of DIR's server")
    url.add_argument("--dir", required=True)
    psql = sub.add_parser("psql", help="run SQL against DIR's server, print the rows")
    psql.add_argument("--dir", required=True)
    psql.add_argument("--db", default=DEFAULT_DB)
    psql.add_argument("sql")
    args = parser.parse_args(argv)

    server = PostgresServer(dir=args.dir, fsync=getattr(args, "fsync", False))
    if args.command == "start":
        server.start()
        _live.remove(server)  # the CLI leaves it running
        print(server.url())
    elif args.command == "stop":
        server.stop()
        if args.remove:
            server.cleanup()
    elif args.command == "url":
        if server.port is None:
            sys.exit(f"no server in {args.dir}")
        print(server.url())
    elif args.command == "psql":
        sys.stdout.write(server.psql(args.sql, db=args.db))
    return 0


if __name__ == "__main__":
    sys.exit(main())
