"""A throwaway PostgreSQL for the benchmarks, as Tests/TestSupport/PostgresTestServer.swift starts one for the tests.

    with postgres() as server:
        url = server.create_database("bench")   # postgres://postgres:...@127.0.0.1:PORT/bench?sslmode=disable

Debian's binaries (/usr/lib/postgresql/<newest>/bin; scripts/install-deps.sh installs them): `initdb` into a
temporary folder (password file, trust over the unix socket, scram-sha-256 over TCP, UTF8, C.UTF-8), then
`pg_ctl start` on a free port of 127.0.0.1 with the unix socket in that folder and `max_connections=200`, the
same flags as the tests. Everything else is PostgreSQL's default, so `fsync` and `synchronous_commit` are on:
every commit waits for the disk, as SQLite's does. `initdb` and `pg_ctl` refuse root, so as root the server runs
as the unprivileged user `watermark-pg` (created when missing). The server is stopped (immediate mode: its data
is thrown away) and its folder removed when the `with` block ends, also on failure or Ctrl-C.
"""
import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile

USER = "postgres"
# A new password for each import: the server lives for one benchmark run on loopback.
PASSWORD = secrets.token_hex(12)
SYSTEM_USER = "watermark-pg"
ROOT = "/usr/lib/postgresql"


class PostgresError(RuntimeError):
    pass


def find_binaries():
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql, or None."""
    found = [os.path.dirname(path) for path in glob.glob(f"{ROOT}/*/bin/initdb")]

    def version(folder):
        name = os.path.basename(os.path.dirname(folder))
        return [int(part) if part.isdigit() else 0 for part in name.split(".")]

    return max(found, key=version) if found else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_system_user():
    if subprocess.run(["id", "-u", SYSTEM_USER], capture_output=True).returncode == 0:
        return
    made = subprocess.run(["/usr/sbin/useradd", "--system", "--no-create-home", "--shell", "/bin/false",
                           SYSTEM_USER], capture_output=True, text=True)
    if made.returncode != 0 and subprocess.run(["id", "-u", SYSTEM_USER], capture_output=True).returncode != 0:
        raise PostgresError(f"cannot create the user {SYSTEM_USER} that PostgreSQL runs as: {made.stderr}")


class Server:
    def __init__(self, binaries, directory, port, run_as):
        self.binaries, self.directory, self.port, self.run_as = binaries, directory, port, run_as

    @property
    def version(self):
        """The major version, from the binaries' folder (/usr/lib/postgresql/15/bin: "15")."""
        return os.path.basename(os.path.dirname(self.binaries))

    def url(self, database="postgres"):
        return f"postgres://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def tool(self, name, *arguments):
        prefix = ["/usr/sbin/runuser", "-u", self.run_as, "--"] if self.run_as else []
        # pg_ctl leaves the server running, which would inherit a pipe and hold it open: output goes to a file.
        out_path = os.path.join(self.directory, f"{name}.out")
        with open(out_path, "w") as out:
            status = subprocess.run(prefix + [os.path.join(self.binaries, name), *arguments],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT).returncode
        if status != 0:
            with open(out_path) as out:
                raise PostgresError(f"{name} failed ({status}): {out.read()[-2000:]}")

    def psql(self, database, *arguments):
        """Runs psql on `database` over the unix socket, stopping at the first error; returns its output
        (standard output and error together: pass -At and -c for a bare value)."""
        self.tool("psql", "-h", self.directory, "-p", str(self.port), "-U", USER, "-d", database, "-X", "-q",
                  "-v", "ON_ERROR_STOP=1", *arguments)
        with open(os.path.join(self.directory, "psql.out")) as out:
            return out.read()

    def create_database(self, name):
        """Creates an empty database and returns its URL."""
        self.tool("psql", "-h", self.directory, "-p", str(self.port), "-U", USER, "-q", "-c",
                  f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def postgres():
    """Starts a PostgreSQL on a free port of 127.0.0.1 and yields its `Server`; stops it and removes its folder."""
    binaries = find_binaries()
    if binaries is None:
        raise PostgresError(f"PostgreSQL is not installed (no {ROOT}/*/bin/initdb): run scripts/install-deps.sh "
                            "or apt-get install postgresql")
    root = os.geteuid() == 0
    if root:
        _ensure_system_user()
    directory = tempfile.mkdtemp(prefix="watermark-pg-bench-")
    server = Server(binaries, directory, _free_port(), SYSTEM_USER if root else None)
    started = False
    try:
        with open(os.path.join(directory, "pwfile"), "w") as pwfile:
            pwfile.write(PASSWORD)
        if root:
            subprocess.run(["chown", "-R", SYSTEM_USER, directory], check=True)
        server.tool("initdb", "-D", f"{directory}/data", "-U", USER, f"--pwfile={directory}/pwfile",
                    "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        started = True  # pg_ctl may fail after the postmaster came up: stop in any case
        server.tool("pg_ctl", "-D", f"{directory}/data", "-l", f"{directory}/server.log", "-w", "-t", "60", "-o",
                    f"-p {server.port} -h 127.0.0.1 -k {directory} -c max_connections=200", "start")
        yield server
    finally:
        if started:
            try:
                server.tool("pg_ctl", "-D", f"{directory}/data", "-m", "immediate", "-w", "stop")
            except PostgresError:
                pass  # not running
        shutil.rmtree(directory, ignore_errors=True)
