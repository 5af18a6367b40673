"""Separate "hosts" for end-to-end tests: Linux network namespaces on one bridge, and a private
Postgres a test may stop, restart, pause (hang) or cut off from some hosts.

One `Network` is a handful of namespaces whose names carry the pytest pid and a random token, so
test sessions side by side never collide:

    dfjob-<pid>-<token>-db   the "database" namespace: bridge br0 = 10.213.0.1/24; the private Postgres
                             listens on 10.213.0.1:5432 (a PgBouncer started there, on :6432)
    dfjob-<pid>-<token>-h1   a host: eth0 = 10.213.0.11/24, one end of a veth pair whose other end
                             (vh1, in the db namespace) is a port of br0
    dfjob-<pid>-<token>-h2   eth0 = 10.213.0.12/24 (vh2), and so on

No namespace has a default route or any link to the root namespace: the subnet exists only inside
the run's own namespaces, so it can meet nothing else on the machine (and every run may use the same
one). The test process itself stays in the root namespace and reaches the private Postgres (and a
PgBouncer) through their Unix sockets (`local_url`), which network namespaces do not separate.

Faults, per host:
- `link_down()`: the host's eth0 goes down. New connections fail at once ("Network is unreachable");
  established ones hang (their packets go nowhere) until `link_up()` or a TCP timeout.
- `blackhole()`: nftables in the db namespace drop every frame to and from the host's bridge port,
  while both ends keep their link up and see no error. A running query neither answers nor fails,
  and a new connection hangs until its connect_timeout; after `restore()` TCP retransmits and the
  query completes. Neighbour (ARP) entries are permanent, so a long blackhole never turns into
  "No route to host" (which an ARP failure would give).

Postgres (and PgBouncer) refuse to run as root: as root these helpers run them as the system user
`dfjobtest` (created on first use), through `setpriv`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from tests.support.waiting import wait_for

SERVER_USER = "dfjobtest"
PG_BIN = Path(os.environ.get("DFJOB_PG_BIN", "/usr/lib/postgresql/15/bin"))
NAME_PREFIX = "dfjob-"
DEFAULT_SUBNET = "10.213.0"  # a /24 of the run's own namespaces only; see the module docstring
SQL_PROBE = Path(__file__).with_name("sql_probe.py")


class Unavailable(Exception):
    """This machine cannot provide what a fixture needs (not root, no netns, a program missing)."""


# -- small process helpers -----------------------------------------------------------------------


def tool(name: str) -> str:
    """The path of a system program, also where /usr/sbin is not on PATH; Unavailable when missing."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise Unavailable(f"`{name}` is not installed")
    return found


def run(argv: Sequence[str], *, timeout: float = 60, input: str | None = None, **kwargs: Any) -> str:
    """Run a command to the end; its stdout, or a RuntimeError that quotes its stderr."""
    done = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def process_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, T, Z, …), None when it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else fields[0]


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def child_pids(pid: int) -> list[int]:
    """Live children of a process."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def kill_process(process: subprocess.Popen[Any]) -> None:
    """SIGKILL a process started with start_new_session=True and everything left in its group,
    and close our ends of its pipes."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError, ValueError):
                pipe.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (in the root namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def private_dir(kind: str) -> Path:
    """A fresh folder under /tmp the test user owns (short: Unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=f"dfjob-{kind}-{os.getpid()}-"))
    owner = server_user()
    if owner is not None:
        os.chown(path, *owner)
    path.chmod(0o755)
    return path


# -- the unprivileged user -------------------------------------------------------------------------

_user_lock = threading.Lock()


def server_user() -> tuple[int, int] | None:
    """(uid, gid) of the user Postgres and PgBouncer run as when we are root (the system user
    `dfjobtest`, created on first use); None when we are not root, and they run as ourselves."""
    if os.geteuid() != 0:
        return None
    with _user_lock:
        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            # Another session may create it at the same moment: only the lookup afterwards counts.
            useradd = [tool("useradd"), "--system", "--no-create-home", "--home-dir=/nonexistent", "--shell=/bin/false"]
            subprocess.run(
                [*useradd, SERVER_USER],
                capture_output=True,
                check=False,
            )
            try:
                entry = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise Unavailable(f"could not create the system user {SERVER_USER!r}") from None
    return entry.pw_uid, entry.pw_gid


def as_server_user(argv: Sequence[str]) -> list[str]:
    """`argv`, run as the unprivileged test user when we are root."""
    owner = server_user()
    if owner is None:
        return list(argv)
    uid, gid = owner
    return [tool("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]


def server_user_env(home: Path) -> dict[str, str]:
    """A small environment for the server processes: no PG* variables, no preloads of the test's."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C", "LANG": "C"}


# -- namespaces ------------------------------------------------------------------------------------


class Namespace:
    """One network namespace and the processes a test ran in it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.processes: list[subprocess.Popen[Any]] = []
        self.probes: list[SqlProbe] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def argv(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """`argv` wrapped to run inside this namespace (`ip netns exec` execs it: the pid stays the same)."""
        return [tool("ip"), "netns", "exec", self.name, *(os.fspath(arg) for arg in argv)]

    def run(self, argv: Sequence[str | os.PathLike[str]], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` in this namespace, in a new session (so its whole group can be killed); it
        inherits our environment unless `env=` says otherwise, and it is killed at teardown."""
        popen_kwargs.setdefault("start_new_session", True)
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        process = subprocess.Popen(self.argv(argv), **popen_kwargs)
        self.processes.append(process)
        return process

    def check_output(self, argv: Sequence[str | os.PathLike[str]], *, timeout: float = 60, **kwargs: Any) -> str:
        """Run `argv` in this namespace to the end; its stdout as text (RuntimeError with its stderr on failure)."""
        return run(self.argv(argv), timeout=timeout, **kwargs)

    def ip(self, *args: str) -> str:
        return run([tool("ip"), "-n", self.name, *args])

    def pids(self) -> list[int]:
        """Every process that lives in this namespace, whoever started it."""
        try:
            text = run([tool("ip"), "netns", "pids", self.name])
        except RuntimeError:
            return []
        return [int(word) for word in text.split()]

    def kill_all(self) -> None:
        """SIGKILL what we started here (whole process groups), then anything else still inside."""
        for probe in self.probes:
            probe.close()
        for process in self.processes:
            kill_process(process)

        def empty() -> bool:
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return not pids

        wait_for(empty, timeout=20, interval=0.05, what=f"no process left in namespace {self.name}")


def _mac(address: str) -> str:
    """A locally administered MAC address made from an IPv4 address (02:00:a:b:c:d)."""
    return "02:00:" + ":".join(f"{int(octet):02x}" for octet in address.split("."))


def _name_pid(name: str) -> int | None:
    match = re.fullmatch(rf"{NAME_PREFIX}(\d+)-[0-9a-f]+-\w+", name)
    return int(match.group(1)) if match else None


def list_namespaces() -> list[str]:
    text = run([tool("ip"), "netns", "list"])
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def sweep_stale_namespaces() -> list[str]:
    """Delete the namespaces of test sessions that died without their teardown (their pid is gone);
    returns their names. The namespaces of live sessions are left alone."""
    swept = []
    for name in list_namespaces():
        pid = _name_pid(name)
        if pid is None or alive(pid):
            continue
        with contextlib.suppress(RuntimeError, AssertionError):
            Namespace(name).kill_all()
            run([tool("ip"), "netns", "delete", name])
            swept.append(name)
    return swept


def check_netns_support() -> None:
    """Raise Unavailable unless this process can build namespaces: root, `ip netns`, `nft`, veth, bridges."""
    if os.geteuid() != 0:
        raise Unavailable("network namespaces need root")
    for name in ("ip", "nft", "setpriv"):
        tool(name)
    probe = Namespace(f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-probe")
    try:
        run([tool("ip"), "netns", "add", probe.name])
    except (RuntimeError, OSError) as exc:
        raise Unavailable(f"`ip netns add` does not work here: {exc}") from None
    try:
        probe.ip("link", "add", "br0", "type", "bridge")
        probe.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
        probe.check_output([tool("nft"), "add", "table", "bridge", "probe"])
    except RuntimeError as exc:
        raise Unavailable(f"namespaces lack bridges, veth pairs or nftables: {exc}") from None
    finally:
        with contextlib.suppress(RuntimeError):
            run([tool("ip"), "netns", "delete", probe.name])


NFT_RULES = """
table bridge dfjob {
    set cut { type ifname; }
    chain input { type filter hook input priority 0; policy accept; iifname @cut drop; }
    chain forward { type filter hook forward priority 0; policy accept; iifname @cut drop; oifname @cut drop; }
    chain output { type filter hook output priority 0; policy accept; oifname @cut drop; }
}
"""


class Host(Namespace):
    """A "host": its own namespace, one address on the network's bridge."""

    def __init__(self, name: str, network: Network, index: int, address: str) -> None:
        super().__init__(name)
        self.network = network
        self.index = index
        self.address = address
        self.port_name = f"vh{index}"  # its veth end in the db namespace, a port of the bridge
        self.is_link_up = True
        self.is_blackholed = False

    def link_down(self) -> None:
        """Pull the cable: eth0 goes down; new connections fail at once, open ones hang."""
        self.ip("link", "set", "eth0", "down")
        self.is_link_up = False

    def link_up(self) -> None:
        """Plug it back in (neighbour entries, flushed with the link, are set again)."""
        self.ip("link", "set", "eth0", "up")
        self.network._set_neighbours(self)
        port_state = [tool("bridge"), "link", "show", "dev", self.port_name]
        wait_for(
            lambda: "forwarding" in self.network.db.check_output(port_state),
            timeout=10,
            what=f"{self.port_name} forwarding again",
        )
        self.is_link_up = True

    def blackhole(self) -> None:
        """Drop every packet to and from this host, silently, while its link stays up."""
        self.network._nft("add", self.port_name)
        self.is_blackholed = True

    def restore(self) -> None:
        """Let its packets through again."""
        self.network._nft("delete", self.port_name)
        self.is_blackholed = False

    def python(self, *args: str | os.PathLike[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """`python ARGS…` (this venv's interpreter) in this host's namespace."""
        return self.run([sys.executable, *args], **popen_kwargs)

    def sql_probe(self) -> SqlProbe:
        """A psycopg session living on this host, driven one request at a time (see SqlProbe)."""
        process = self.python(
            SQL_PROBE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
        )
        self.probes.append(SqlProbe(process))
        return self.probes[-1]


class Network:
    """A db namespace with a bridge, and hosts joined to it; see the module docstring.

    `create(hosts=2)` builds it; `cleanup()` kills every process inside and deletes every namespace
    (with them go their veths and the bridge), and stops the Postgres and whatever was registered
    with `on_cleanup` first. Cleanup is safe to call more than once and after a failed create.
    """

    def __init__(self, subnet: str = DEFAULT_SUBNET) -> None:
        self.subnet = subnet
        self.prefix = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.db = Namespace(f"{self.prefix}-db")
        self.db_address = f"{subnet}.1"
        self.hosts: list[Host] = []
        self.postgres: PrivatePostgres | None = None
        self._created: list[Namespace] = []
        self._cleanups: list[Callable[[], None]] = []

    @property
    def cidr(self) -> str:
        return f"{self.subnet}.0/24"

    def create(self, hosts: int = 2) -> Network:
        check_netns_support()
        sweep_stale_namespaces()
        self._add_namespace(self.db)
        db = self.db
        db.ip("link", "set", "lo", "up")
        db.ip("link", "add", "br0", "address", _mac(self.db_address), "type", "bridge")
        db.ip("addr", "add", f"{self.db_address}/24", "dev", "br0")
        db.ip("link", "set", "br0", "up")
        db.check_output([tool("nft"), "-f", "-"], input=NFT_RULES)
        for _ in range(hosts):
            self.add_host()
        return self

    def _add_namespace(self, namespace: Namespace) -> None:
        run([tool("ip"), "netns", "add", namespace.name])
        self._created.append(namespace)

    def add_host(self) -> Host:
        index = len(self.hosts) + 1
        host = Host(f"{self.prefix}-h{index}", self, index, f"{self.subnet}.{10 + index}")
        self._add_namespace(host)
        self.db.ip("link", "add", host.port_name, "type", "veth", "peer", "name", "eth0", "netns", host.name)
        self.db.ip("link", "set", host.port_name, "master", "br0", "up")
        host.ip("link", "set", "lo", "up")
        host.ip("link", "set", "eth0", "address", _mac(host.address))
        host.ip("addr", "add", f"{host.address}/24", "dev", "eth0")
        host.ip("link", "set", "eth0", "up")
        self.hosts.append(host)
        for other in self.hosts:
            self._set_neighbours(other)
        self.db.ip("neigh", "replace", host.address, "lladdr", _mac(host.address), "dev", "br0", "nud", "permanent")
        return host

    def _set_neighbours(self, host: Host) -> None:
        """Permanent neighbour entries on `host` for the db address and every other host."""
        for address in [self.db_address] + [other.address for other in self.hosts if other is not host]:
            host.ip("neigh", "replace", address, "lladdr", _mac(address), "dev", "eth0", "nud", "permanent")

    def _nft(self, action: Literal["add", "delete"], port: str) -> None:
        self.db.check_output([tool("nft"), action, "element", "bridge", "dfjob", "cut", f'{{ "{port}" }}'])

    def start_postgres(self, **kwargs: Any) -> PrivatePostgres:
        """A private Postgres in the db namespace on db_address:5432, trusting the whole subnet."""
        kwargs.setdefault("listen_addresses", (self.db_address,))
        kwargs.setdefault("port", 5432)
        kwargs.setdefault("trusted_networks", (self.cidr,))
        postgres = PrivatePostgres(namespace=self.db, **kwargs)
        self.on_cleanup(postgres.cleanup)
        postgres.start()
        if self.postgres is None:
            self.postgres = postgres
        return postgres

    def url(self, database: str = "postgres") -> str:
        """The URL hosts use for the network's Postgres (through the bridge)."""
        assert self.postgres is not None, "no Postgres started on this network"
        return self.postgres.url(database=database)

    def on_cleanup(self, callback: Callable[[], None]) -> None:
        """Run `callback` at cleanup, before the namespaces go (last registered, first run)."""
        self._cleanups.append(callback)

    def cleanup(self) -> None:
        errors: list[str] = []
        while self._cleanups:
            callback = self._cleanups.pop()
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 (keep tearing down; report everything at the end)
                errors.append(f"{callback}: {exc}")
        while self._created:
            namespace = self._created.pop()
            try:
                namespace.kill_all()
                run([tool("ip"), "netns", "delete", namespace.name])
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{namespace.name}: {exc}")
        if errors:
            raise RuntimeError("network teardown left something behind: " + "; ".join(errors))


# -- a psycopg session on a host ---------------------------------------------------------------------


class SqlProbe:
    """A Python child (tests/support/sql_probe.py) holding one psycopg connection, in a host's
    namespace. Each request is one JSON line; each reply is one JSON line:
    `{"ok": true, "rows": [...], "elapsed": s}` or `{"ok": false, "error": "Type: message", "elapsed": s}`.

    `send()` and `reply(timeout)` are separate so a test can watch a request hang: `reply(2)` is
    None while nothing came back within 2 seconds.
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with contextlib.suppress(OSError, ValueError):  # closed under us by close()
            for line in self.process.stdout:
                self._replies.put(json.loads(line))
        self._replies.put({"ok": False, "error": "the probe exited", "exited": True})

    def send(self, op: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()

    def reply(self, timeout: float) -> dict[str, Any] | None:
        """The next reply, or None if none comes within `timeout` seconds."""
        try:
            return self._replies.get(timeout=timeout)
        except queue.Empty:
            return None

    def request(self, op: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        self.send(op, **fields)
        answer = self.reply(timeout)
        if answer is None:
            raise AssertionError(f"no reply to {op} {fields} within {timeout}s")
        return answer

    def connect(self, url: str, connect_timeout: int = 5, timeout: float = 30) -> dict[str, Any]:
        """Open the connection (autocommit, no prepared statements); the reply says whether it worked."""
        return self.request("connect", timeout=timeout, url=url, connect_timeout=connect_timeout)

    def query(self, sql: str, timeout: float = 30) -> dict[str, Any]:
        return self.request("query", timeout=timeout, sql=sql)

    def close(self) -> None:
        """Kill the child (its connection drops with it); safe to call twice."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self._reader.join(timeout=10)  # it reads to EOF before we close its pipe
        kill_process(self.process)


# -- a private Postgres ------------------------------------------------------------------------------

# What `pg_ctl stop -m MODE` sends the postmaster.
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def _conf_value(value: str | int) -> str:
    """A value as postgresql.conf spells it."""
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else str(value)


class PrivatePostgres:
    """A throwaway Postgres cluster of the test's own: initdb into a temp folder, trust auth,
    fsync off. It runs as the unprivileged test user, inside `namespace` when given.

    `url()` is the TCP URL (what hosts use); `local_url()` goes through the Unix socket and works
    from any namespace, the test process's included. `cleanup()` stops it and removes everything.
    """

    def __init__(
        self,
        *,
        listen_addresses: Sequence[str] = ("127.0.0.1",),
        port: int | None = None,
        namespace: Namespace | None = None,
        trusted_networks: Sequence[str] = (),
        max_connections: int = 100,
        settings: Mapping[str, str | int] | None = None,
        bin_dir: Path = PG_BIN,
    ) -> None:
        for program in ("initdb", "pg_ctl", "postgres"):
            if not (bin_dir / program).exists():
                raise Unavailable(f"no Postgres binaries in {bin_dir} (set DFJOB_PG_BIN)")
        self.bin_dir = bin_dir
        self.listen_addresses = tuple(listen_addresses)
        self.namespace = namespace
        self.port = port if port is not None else free_port(self.listen_addresses[0])
        self.trusted_networks = tuple(trusted_networks)
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        self.root = private_dir("pg")
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log_path = self.root / "postgres.log"
        self._paused: list[int] = []
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"PrivatePostgres({self.listen_addresses[0]}:{self.port}, {self.root})"

    def _argv(self, program: str, *args: str) -> list[str]:
        argv = as_server_user([str(self.bin_dir / program), *args])
        return self.namespace.argv(argv) if self.namespace is not None else argv

    def _run(self, program: str, *args: str, timeout: float = 90) -> str:
        return run(self._argv(program, *args), timeout=timeout, cwd=self.root, env=server_user_env(self.root))

    # -- life cycle

    def init(self) -> None:
        """initdb (once), and write our settings and pg_hba."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.socket_dir.mkdir()
        owner = server_user()
        if owner is not None:
            os.chown(self.socket_dir, *owner)
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "-N")
        settings: dict[str, str | int] = {
            "listen_addresses": ",".join(self.listen_addresses),
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": self.max_connections,
            "shared_buffers": "32MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_line_prefix": "%m [%p] ",
        }
        settings.update(self.settings)
        lines = [f"{key} = {_conf_value(value)}" for key, value in settings.items()]
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# dfjob tests\n" + "\n".join(lines) + "\n")
        hba = ["local all all trust", "host all all 127.0.0.1/32 trust", "host all all ::1/128 trust"]
        hba += [f"host all all {network} trust" for network in self.trusted_networks]
        (self.data_dir / "pg_hba.conf").write_text("\n".join(hba) + "\n", encoding="utf-8")

    def start(self) -> None:
        """Start the postmaster (our own child, in a session of its own: nothing outlives us
        unreaped) and wait until it accepts connections."""
        assert self.postmaster_pid() is None, "already running"
        self.init()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._argv("postgres", "-D", str(self.data_dir)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
                env=server_user_env(self.root),
                start_new_session=True,
            )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited {self.process.returncode}:\n{self.log()}")
            try:  # line 8 of postmaster.pid is the server's status, "ready" once it accepts connections
                lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            except FileNotFoundError:
                return False
            return len(lines) >= 8 and lines[7].strip() == "ready"

        wait_for(ready, timeout=60, interval=0.02, what=f"{self} to accept connections")

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server (a paused one is resumed first) and wait for it; no-op when it is down."""
        if self.process is None:
            return
        self.resume()
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(STOP_SIGNALS[mode])
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill_process(self.process)
            raise RuntimeError(f"{self} did not stop within 60 s ({mode}); killed it") from None
        finally:
            self.process = None

    def restart(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        self.stop(mode)
        self.start()

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid, None when the server is down."""
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def pids(self) -> list[int]:
        """The postmaster and all its children (the backends and background processes)."""
        postmaster = self.postmaster_pid()
        return [] if postmaster is None else [postmaster, *child_pids(postmaster)]

    def pause(self) -> None:
        """SIGSTOP the postmaster and every child: a hung server. Connections are still accepted by
        the kernel, but no startup or query ever gets an answer, until `resume()`."""
        postmaster = self.postmaster_pid()
        assert postmaster is not None, "the server is not running"
        os.kill(postmaster, signal.SIGSTOP)
        self._paused = [postmaster]
        while True:  # a child forked just before the stop shows up in a later scan
            new = [pid for pid in child_pids(postmaster) if pid not in self._paused]
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            self._paused += new
        wait_for(
            lambda: all(process_state(pid) in ("T", "t", "Z", "X", None) for pid in self._paused),
            timeout=10,
            what="the Postgres processes to stop",
        )

    def resume(self) -> None:
        """SIGCONT everything `pause()` stopped."""
        for pid in reversed(self._paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._paused = []

    @property
    def paused(self) -> bool:
        return bool(self._paused)

    def cleanup(self) -> None:
        """Stop it whatever its state (immediate; SIGKILL to its whole group if that fails) and
        delete its folder. Safe to call twice."""
        process = self.process
        leftover = self.pids()
        try:
            self.stop("immediate")
        except RuntimeError:
            pass  # killed already
        finally:
            if process is not None:
                kill_process(process)  # the group: any child the postmaster left behind
            wait_for(lambda: not any(alive(pid) for pid in leftover), timeout=20, what="Postgres processes gone")
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- connecting

    def url(self, host: str | None = None, database: str = "postgres") -> str:
        """`postgresql://postgres@HOST:PORT/DATABASE`; HOST defaults to the first listen address."""
        return f"postgresql://postgres@{host or self.listen_addresses[0]}:{self.port}/{database}"

    def local_url(self, database: str = "postgres") -> str:
        """The URL through the Unix socket: usable from the test process whatever the namespace."""
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir), safe='/')}&port={self.port}"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) through the Unix socket; its rows, if any."""
        import psycopg

        with psycopg.connect(self.local_url(database), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description is not None else []

    def create_database(self, name: str) -> None:
        self.execute(f'CREATE DATABASE "{name}"')

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
