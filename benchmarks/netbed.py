"""An emulated cluster network on one machine: one network namespace per MPI rank, shaped links.

On one machine MPI moves bytes through shared memory at memcpy speed, so communication compression
cannot show what it does on a cluster. This test bed builds, with ``ip`` and ``tc`` (root or
CAP_NET_ADMIN needed)::

    namespace mpbnet-r0: nic 10.231.7.10/24 ──veth── p0 ┐
    namespace mpbnet-r1: nic 10.231.7.11/24 ──veth── p1 ├─ bridge "br0" in namespace mpbnet-sw
    ...                                                  ┘

Every rank's NIC and every switch port is shaped by a token bucket (``tc qdisc ... tbf``, a bucket
of 0.3 ms of traffic, with the veths' GSO packets kept within it: see ``BURST_SECONDS``) to the
link rate in its egress direction, so each emulated host has one full-duplex link of that rate to a
switch, as in a cluster. The rank namespaces hold only their NIC and a loopback, without any route
out: traffic can only reach the other ranks' addresses inside the bed.

MPI is forced onto TCP through those NICs: each rank runs inside its own namespace (an MPMD launch
``mpiexec -n 1 ip netns exec mpbnet-r0 python ... : -n 1 ip netns exec mpbnet-r1 python ...``; the
process manager's control connection is an inherited socket, so it needs no network), MPICH's
shared-memory transport is switched off (``MPIR_CVAR_NOLOCAL=1``, ``MPIR_CVAR_CH4_SHM_ENABLE=0``),
its netmod is OFI with libfabric's ``tcp`` provider bound to the bed's NIC (``FI_PROVIDER=tcp``,
``FI_TCP_IFACE``). :func:`NetBed.counters` reads the bytes each NIC sent, so a run can check that
its traffic really crossed the shaped links (see :func:`check_links`).

Everything is torn down at the end, also on failure: :class:`NetBed` is a context manager whose exit
kills what still runs inside its namespaces and deletes them; SIGINT/SIGTERM/SIGHUP are turned into
exceptions while it is up, so ``finally`` blocks run; leftovers of a crashed earlier run (namespaces
named ``mpbnet-*``) are removed before a new bed is built. A lock file (in root-owned /run, never
followed through a symbolic link, never truncated) keeps two beds, or a bed and ``cleanup``, from
fighting over the names.

    python benchmarks/netbed.py check [--ranks 4] [--rate 1gbit] [--sweep] [--json OUT]
                                            # build, verify with a raw Allreduce (and time 4 KiB..64 MiB), tear down
    python benchmarks/netbed.py run --ranks 4 --rate 1gbit [--delay-ms D] -- mpiopt run ARGS...
                                                                    # any job, one emulated host per rank
    python benchmarks/netbed.py cleanup                             # remove leftovers of a crashed run

``run`` starts the command once in each rank's namespace (``mpiopt ...`` as ``python -m mpiopt ...``
with this Python, so the ranks run the same installation; paths are taken as given, relative to the
current directory), waits for it, and reports the bytes that crossed the bed's NICs on stderr (and,
with ``--json FILE``, as JSON). Its exit status is the job's.
"""

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Sequence

from mpiopt import launch

PREFIX = "mpbnet-"
SWITCH = PREFIX + "sw"
NIC = "mpbnic"
BRIDGE = "br0"
SUBNET = "10.231.7"
HOST0 = 10
LOCK = Path(os.environ.get("MPIOPT_NETBED_LOCK", "/run/mpiopt-netbed.lock"))
"""The bed's lock; in /run, which only root can write, so no other user can plant a file or link there."""

RATES = {"1gbit": 1e9, "10gbit": 1e10}
BURST_SECONDS = 0.3e-3
"""tbf's bucket, in time at the link's rate: shorter than the 0.3-0.5 ms an MPI message takes to
start here, so that no message, after a pause, crosses faster than bytes / rate (``check --sweep``;
the earlier bucket of 1 ms let a 256 KiB message cross at 0.73x its wire time at 1 Gbit/s)."""
GSO_DEFAULT = 65536
"""veth's gso_max_size."""
"""The link rates the benchmarks name (bits per second); any tc rate string works with NetBed."""

MPI_ENV = {
    # Treat every rank as remote: no shared-memory transport, no node-local collective shortcuts.
    "MPIR_CVAR_NOLOCAL": "1",
    "MPIR_CVAR_CH4_SHM_ENABLE": "0",
    # The OFI netmod over libfabric's TCP provider on the bed's NIC (the UCX netmod, MPICH's default
    # in this build, would pick its own transports).
    "MPIR_CVAR_CH4_NETMOD": "ofi",
    "FI_PROVIDER": "tcp",
    "FI_TCP_IFACE": NIC,
    "FI_SOCKETS_IFACE": NIC,
}
"""Environment that keeps MPICH (ch4, OFI netmod) off shared memory and on the bed's TCP links."""


class NetBedError(RuntimeError):
    """The test bed cannot be built or used; the message says why."""


def _run(args: Sequence[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetBedError(f"`{' '.join(args)}` failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def rate_bits(rate: str) -> float:
    """'1gbit' -> 1e9 (tc's units: bit, kbit, mbit, gbit; decimal multiples)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)bit", rate.strip().lower())
    if not m:
        raise NetBedError(f"rate must look like 100mbit, 1gbit or 10gbit, got {rate!r}")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]


def namespaces() -> List[str]:
    """Names of the bed's namespaces that exist now (ours start with ``mpbnet-``)."""
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].startswith(PREFIX)]


def _pids_in(ns: str) -> List[int]:
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def cleanup() -> List[str]:
    """Remove every ``mpbnet-*`` namespace (idempotent): end the processes the bed started in them,
    by id (SIGTERM, then SIGKILL after 2 s), then delete the namespaces, which deletes their veths
    and bridge. Returns the names removed."""
    names = namespaces()
    pids = sorted({p for ns in names for p in _pids_in(ns) if p != os.getpid()})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for p in pids:
            try:
                os.kill(p, sig)
                alive.append(p)
            except ProcessLookupError:
                pass
        if not alive:
            break
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(_alive(p) for p in alive):
            time.sleep(0.05)
        pids = [p for p in alive if _alive(p)]
    for ns in names:
        _run(["ip", "netns", "del", ns], check=False)
    left = namespaces()
    if left:
        raise NetBedError(f"could not delete namespaces {left}")
    return names


def open_lock(path: Path) -> BinaryIO:
    """Open ``path`` as the bed's lock and take it (non-blocking); returns the open file that holds it.

    The bed runs as root, so the lock must not become a way to damage files: the name is never
    followed through a symbolic link (O_NOFOLLOW), the file is never truncated, a new one is created
    with mode 0600, and anything but a regular file of ours with one link (a planted hard link) is
    refused. Raises NetBedError saying why, or that another bed holds the lock.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise NetBedError(f"cannot open the lock {path} ({exc.strerror}); if it is a symbolic link or not a "
                          f"regular file, remove it, or set MPIOPT_NETBED_LOCK to a path in a root-owned folder") from None
    lock = os.fdopen(fd, "r+b")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.geteuid():
        lock.close()
        raise NetBedError(f"the lock {path} is not a regular file of this user with a single link; remove it")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise NetBedError(f"another test bed is up (lock {path} is held); wait for it to finish") from None
    return lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def preflight() -> None:
    """Raise NetBedError, saying why, when this machine cannot host the bed."""
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetBedError(f"`{tool}` not found on PATH (iproute2 is needed: apt-get install iproute2)")
    if os.geteuid() != 0:
        raise NetBedError("network namespaces, veth pairs and tc shaping need root (or CAP_NET_ADMIN); "
                          "run as root, e.g. `sudo .venv/bin/python benchmarks/allreduce_step.py ...`")


class _Signals:
    """While active, SIGINT/SIGTERM/SIGHUP raise SystemExit(128 + signum) so ``finally`` runs."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self._old: Dict[int, object] = {}

    def __enter__(self):
        def handler(signum, frame):
            raise SystemExit(128 + signum)

        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, handler)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


class NetBed:
    """``ranks`` namespaces behind one switch, links of ``rate`` (a tc rate such as '1gbit').

    Use as a context manager (``with NetBed(4, '1gbit') as bed: ...``): entering builds it (after
    removing leftovers), leaving tears it down whatever happened. ``mpmd(argv)`` gives the mpiexec
    command line that runs ``argv`` once in each rank's namespace; ``env()`` the MPI environment.
    ``delay_ms`` adds a one-way delay per link with netem (where the kernel has sch_netem).
    """

    def __init__(self, ranks: int, rate: str = "1gbit", delay_ms: float = 0.0, mtu: int = 1500):
        if ranks < 1:
            raise NetBedError(f"ranks must be >= 1, got {ranks}")
        if ranks > 200:
            raise NetBedError(f"at most 200 ranks fit the bed's /24 subnet, got {ranks}")
        self.ranks, self.rate, self.delay_ms, self.mtu = ranks, rate, float(delay_ms), int(mtu)
        self.bits_per_s = rate_bits(rate)
        self._lock_file = None
        self._signals = _Signals()
        self.up = False

    # names and addresses
    def ns(self, rank: int) -> str:
        return f"{PREFIX}r{rank}"

    def address(self, rank: int) -> str:
        return f"{SUBNET}.{HOST0 + rank}"

    def gso_max_size(self) -> int:
        """The largest GSO packet the links make: 64 KiB (veth's default) where the bucket holds it,
        else the largest power of two (>= 2 KiB) within the bucket's BURST_SECONDS of the rate less
        two MTUs (32 KiB at 1 Gbit/s): a GSO packet larger than the bucket is split by tbf, which
        costs the CPU more than the segments themselves (Allreduces at 2.3x their wire time)."""
        room = round(self.bits_per_s / 8 * BURST_SECONDS) - 2 * self.mtu
        size = GSO_DEFAULT
        while size > 2048 and size > room:
            size //= 2
        return size

    def _tbf(self) -> List[str]:
        # Bucket: BURST_SECONDS of traffic, at least one GSO packet and two MTUs; queue: 20 ms of traffic.
        bps = self.bits_per_s / 8
        burst = max(round(bps * BURST_SECONDS), self.gso_max_size() + 2 * self.mtu)
        limit = max(int(bps * 20e-3), 4 * burst)
        return ["tbf", "rate", self.rate, "burst", str(burst), "limit", str(limit)]

    def _shape(self, ns: str, dev: str) -> None:
        if self.gso_max_size() != GSO_DEFAULT:
            _run(["ip", "-n", ns, "link", "set", "dev", dev, "gso_max_size", str(self.gso_max_size())])
        if self.delay_ms > 0:
            _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay",
                  f"{self.delay_ms}ms"])
            _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *self._tbf()])
        else:
            _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *self._tbf()])

    # lifecycle
    def __enter__(self) -> "NetBed":
        self._signals.__enter__()
        try:
            self.build()
        except BaseException:
            self.teardown()
            self._signals.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> bool:
        try:
            self.teardown()
        finally:
            self._signals.__exit__(*exc)
        return False

    def build(self) -> None:
        preflight()
        self._lock_file = open_lock(LOCK)
        removed = cleanup()
        if removed:
            print(f"netbed: removed leftovers of an earlier run: {', '.join(removed)}", file=sys.stderr)
        self.up = True
        try:
            _run(["ip", "netns", "add", SWITCH])
        except NetBedError as e:
            raise NetBedError(f"cannot create a network namespace ({e}); the bed needs root or CAP_NET_ADMIN "
                              "and a kernel with network namespaces") from None
        sw = ["ip", "-n", SWITCH]
        _run([*sw, "link", "add", BRIDGE, "type", "bridge"])
        _run([*sw, "link", "set", BRIDGE, "up"])
        _run([*sw, "link", "set", "lo", "up"])
        for r in range(self.ranks):
            ns, port = self.ns(r), f"p{r}"
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "add", NIC, "netns", ns, "mtu", str(self.mtu), "type", "veth",
                  "peer", "name", port, "netns", SWITCH, "mtu", str(self.mtu)])
            _run([*sw, "link", "set", port, "master", BRIDGE])
            _run([*sw, "link", "set", port, "up"])
            rn = ["ip", "-n", ns]
            _run([*rn, "addr", "add", f"{self.address(r)}/24", "dev", NIC])
            _run([*rn, "link", "set", NIC, "up"])
            _run([*rn, "link", "set", "lo", "up"])
            try:
                self._shape(ns, NIC)
                self._shape(SWITCH, port)
            except NetBedError as e:
                what = "netem (for --delay-ms)" if self.delay_ms > 0 else "tbf"
                raise NetBedError(f"cannot shape the links with tc {what}: {e}") from None
        self._wait_links()

    def _wait_links(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = [self._operstate(self.ns(r), NIC) for r in range(self.ranks)]
            states += [self._operstate(SWITCH, f"p{r}") for r in range(self.ranks)]
            if all(s == "UP" for s in states):
                return
            if time.monotonic() > deadline:
                raise NetBedError(f"links did not come up within {timeout} s: {states}")
            time.sleep(0.05)

    @staticmethod
    def _operstate(ns: str, dev: str) -> str:
        out = _run(["ip", "-n", ns, "-j", "link", "show", dev]).stdout
        return json.loads(out)[0].get("operstate", "?")

    def teardown(self) -> None:
        """Remove the bed (idempotent; also removes any other ``mpbnet-*`` leftovers)."""
        try:
            if self.up:
                cleanup()
        finally:
            self.up = False
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    # using it
    def counters(self) -> List[Dict[str, int]]:
        """Bytes and packets each rank's NIC has sent and received so far."""
        out = []
        for r in range(self.ranks):
            j = json.loads(_run(["ip", "-n", self.ns(r), "-j", "-s", "link", "show", NIC]).stdout)[0]
            st = j.get("stats64") or j["stats"]
            out.append({"tx_bytes": int(st["tx"]["bytes"]), "rx_bytes": int(st["rx"]["bytes"]),
                        "tx_packets": int(st["tx"]["packets"]), "rx_packets": int(st["rx"]["packets"])})
        return out

    def env(self) -> Dict[str, str]:
        return dict(MPI_ENV)

    def mpmd(self, mpiexec: str, argv: Sequence[str]) -> List[str]:
        """``mpiexec -n 1 ip netns exec NS0 ARGV : -n 1 ip netns exec NS1 ARGV : ...``."""
        cmd = [mpiexec]
        for r in range(self.ranks):
            if r:
                cmd.append(":")
            cmd += ["-n", "1", "ip", "netns", "exec", self.ns(r), *argv]
        return cmd

    def hostfile_launch(self, mpiexec: str, argv: Sequence[str], folder: Path) -> List[str]:
        """The command that starts ``argv`` on every rank as a cluster user would, through a hostfile.

        Writes ``folder/hostfile`` (the ranks' addresses, one slot each) and ``folder/ssh``, a stand-in
        for ssh that runs the remote command in the namespace holding the address it is given (and
        refuses any other host). MPICH's mpiexec runs in rank 0's namespace, as on a head node, with
        ``-f hostfile -launcher ssh -launcher-exec folder/ssh -iface <the bed's NIC>``: its proxies
        reach it over the shaped links, as they would across a cluster's network."""
        hosts = {self.address(r): self.ns(r) for r in range(self.ranks)}
        (folder / "hostfile").write_text("".join(f"{a}:1\n" for a in hosts))
        cases = "".join(f"  {a}) ns={n} ;;\n" for a, n in hosts.items())
        ssh = folder / "ssh"
        ssh.write_text("#!/bin/sh\n# ssh stand-in for the test bed: run the command in the host's namespace\n"
                       'while [ "${1#-}" != "$1" ]; do shift; done\n'
                       f'host=$1; shift\ncase "$host" in\n{cases}'
                       '  *) echo "netbed ssh: no host $host in the bed" >&2; exit 255 ;;\nesac\n'
                       'exec ip netns exec "$ns" sh -c "$*"\n')
        ssh.chmod(0o700)
        return ["ip", "netns", "exec", self.ns(0), mpiexec, "-f", str(folder / "hostfile"), "-n", str(self.ranks),
                "-launcher", "ssh", "-launcher-exec", str(ssh), "-iface", NIC, *argv]

    def describe(self, mpi_env: bool = True) -> Dict[str, object]:
        """What the bed is, for a results file (with the MPI environment of its ranks unless not
        ``mpi_env``: gloo jobs do not use it)."""
        described = {
            "kind": "network namespaces, one per rank, veth links to a bridge, tc tbf on both directions",
            "ranks": self.ranks,
            "rate": self.rate,
            "rate_bits_per_s": self.bits_per_s,
            "delay_ms": self.delay_ms,
            "mtu": self.mtu,
            "tbf": " ".join(self._tbf()),
            "gso_max_size": self.gso_max_size(),
            "addresses": [self.address(r) for r in range(self.ranks)],
            "mpi_env": self.env(),
        }
        if not mpi_env:
            del described["mpi_env"]
        return described


def mpiexec_path() -> str:
    """mpiopt's mpiexec lookup (the venv's MPICH first), failing as the test bed does."""
    try:
        return launch.mpiexec_path()
    except FileNotFoundError as exc:
        raise NetBedError(str(exc)) from None


def allreduce_time(ranks: int, nbytes: int, dtype: str = "float32", reps: int = 3) -> str:
    """Python source of a tiny MPI program timing ``reps`` in-place Allreduces of ``nbytes``."""
    return (
        "import json, time, numpy as np\n"
        "from mpi4py import MPI\n"
        "c = MPI.COMM_WORLD\n"
        f"a = np.ones({nbytes} // np.dtype('{dtype}').itemsize, dtype='{dtype}')\n"
        "c.Allreduce(MPI.IN_PLACE, a)\n"
        "ts = []\n"
        f"for _ in range({reps}):\n"
        "    c.Barrier(); t = time.perf_counter(); c.Allreduce(MPI.IN_PLACE, a); ts.append(time.perf_counter() - t)\n"
        "ts = c.gather(ts)\n"
        "if c.rank == 0: print('RESULT', json.dumps(sorted(max(r[i] for r in ts) for i in range(len(ts[0])))))\n"
    )


def ring_seconds(ranks: int, nbytes: int, bits_per_s: float) -> float:
    """Time a bandwidth-optimal Allreduce needs on links of ``bits_per_s``: each rank sends
    2 (n - 1) / n of the buffer (reduce-scatter + allgather)."""
    return 2 * (ranks - 1) / ranks * nbytes * 8 / bits_per_s if ranks > 1 else 0.0


def check_links(bed: NetBed, nbytes: int = 40_000_000, reps: int = 3, timeout: float = 300) -> Dict[str, object]:
    """Time a raw float32 Allreduce of ``nbytes`` in the bed and count the bytes on its NICs.

    Raises NetBedError when the traffic did not cross the shaped links (NIC counters below the
    bytes the Allreduces must move) or ran much faster than the links allow (a hidden shared-memory
    path). Returns the measurements for the results file."""
    before = bed.counters()
    src = allreduce_time(bed.ranks, nbytes, "float32", reps)
    cmd = bed.mpmd(mpiexec_path(), [sys.executable, "-c", src])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launch.mpi_env(bed.ranks, bed.env()))
    if proc.returncode != 0:
        raise NetBedError(f"MPI across the bed failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise NetBedError(f"the link check printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    times = json.loads(line[0][7:])
    after = bed.counters()
    sent = sum(a["tx_bytes"] - b["tx_bytes"] for a, b in zip(after, before))
    # Each Allreduce (the warm-up and the timed ones) must move at least 2 (n-1)/n * nbytes per rank.
    expect_bytes = (reps + 1) * bed.ranks * 2 * (bed.ranks - 1) / bed.ranks * nbytes
    median = sorted(times)[len(times) // 2]
    ideal = ring_seconds(bed.ranks, nbytes, bed.bits_per_s)
    info = {
        "allreduce_bytes": nbytes,
        "dtype": "float32",
        "seconds": times,
        "median_seconds": median,
        "link_bound_seconds": ideal,
        "ratio_to_link_bound": median / ideal if ideal else None,
        "nic_tx_bytes": sent,
        "min_expected_tx_bytes": expect_bytes,
    }
    if bed.ranks > 1:
        if sent < 0.95 * expect_bytes:
            raise NetBedError(f"only {sent} bytes crossed the bed's NICs where the Allreduces need {expect_bytes:.0f}: "
                              f"MPI is not using the shaped links ({info})")
        if median < 0.8 * ideal:
            raise NetBedError(f"a {nbytes}-byte Allreduce took {median:.3f} s, faster than the links allow "
                              f"({ideal:.3f} s): some traffic bypasses the shaping ({info})")
    return info


SWEEP_BYTES = tuple(4096 * 4 ** i for i in range(8))
"""Message sizes of ``check``'s sweep: 4 KiB to 64 MiB, by factors of 4."""
PAUSE_S = 0.05
"""Idle time before each timed message: long enough for a token bucket to refill, as between a
training step's buckets."""


def sweep_program(sizes: Sequence[int], reps: int, pause: float) -> str:
    """Python source of an MPI program that, for each size, after a pause each time, times ``reps``
    isolated messages (rank 0 sends, rank 1 answers with one byte; rank 0's clock) and ``reps``
    in-place float32 Allreduces (the slowest rank's time); prints one RESULT line of JSON medians."""
    return (
        "import json, time, numpy as np\n"
        "from mpi4py import MPI\n"
        "c = MPI.COMM_WORLD\n"
        "ack = np.zeros(1, dtype='u1')\n"
        "rows = []\n"
        f"for size in {list(sizes)!r}:\n"
        "    buf = np.ones(size // 4, dtype='float32')\n"
        "    c.Allreduce(MPI.IN_PLACE, buf)\n"
        "    msg, red = [], []\n"
        f"    for _ in range({reps}):\n"
        f"        c.Barrier(); time.sleep({pause})\n"
        "        t = time.perf_counter()\n"
        "        if c.rank == 0:\n"
        "            c.Send(buf, dest=1); c.Recv(ack, source=1)\n"
        "        elif c.rank == 1:\n"
        "            c.Recv(buf, source=0); c.Send(ack, dest=0)\n"
        "        msg.append(time.perf_counter() - t)\n"
        f"        c.Barrier(); time.sleep({pause})\n"
        "        t = time.perf_counter(); c.Allreduce(MPI.IN_PLACE, buf); red.append(time.perf_counter() - t)\n"
        "    red = [max(v) for v in zip(*c.allgather(red))]\n"
        "    rows.append({'bytes': size, 'message_seconds': float(np.median(msg)), "
        "'allreduce_seconds': float(np.median(red))})\n"
        "if c.rank == 0: print('RESULT', json.dumps(rows))\n"
    )


def sweep_ratios(rows: Sequence[Dict[str, float]], ranks: int, bits_per_s: float) -> List[Dict[str, float]]:
    """Each size's measured time over the link's ideal: bytes / rate for a message, the ring's
    2 (n - 1) / n of the buffer a rank for an Allreduce (below 1: faster than the wire allows)."""
    out = []
    for row in rows:
        message_ideal = row["bytes"] * 8 / bits_per_s
        allreduce_ideal = ring_seconds(ranks, row["bytes"], bits_per_s)
        out.append({**row, "message_ideal_seconds": message_ideal,
                    "message_ratio": row["message_seconds"] / message_ideal,
                    "allreduce_ideal_seconds": allreduce_ideal,
                    "allreduce_ratio": row["allreduce_seconds"] / allreduce_ideal if allreduce_ideal else None})
    return out


def check_sizes(bed: "NetBed", sizes: Sequence[int] = SWEEP_BYTES, reps: int = 3, pause: float = PAUSE_S,
                timeout: float = 600) -> List[Dict[str, float]]:
    """``sweep_program`` across the bed (at least 2 ranks): measured / ideal per message size."""
    if bed.ranks < 2:
        raise NetBedError("the size sweep needs at least 2 ranks")
    cmd = bed.mpmd(mpiexec_path(), [sys.executable, "-c", sweep_program(sizes, reps, pause)])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launch.mpi_env(bed.ranks, bed.env()))
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise NetBedError(f"the size sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return sweep_ratios(json.loads(line[0][7:]), bed.ranks, bed.bits_per_s)


def sweep_table(rate: str, ranks: int, rows: Sequence[Dict[str, float]]) -> str:
    """A Markdown table of a sweep: size, message and Allreduce time, each over its ideal."""
    lines = [f"| {rate}, {ranks} ranks: bytes | message ms | message / ideal | Allreduce ms | Allreduce / ideal |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['bytes']:,} | {1e3 * r['message_seconds']:.3f} | {r['message_ratio']:.2f} | "
                     f"{1e3 * r['allreduce_seconds']:.3f} | {r['allreduce_ratio']:.2f} |")
    return "\n".join(lines)


def job_argv(command: Sequence[str]) -> List[str]:
    """The argv each rank runs: ``mpiopt ...`` becomes ``<this python> -m mpiopt ...`` (the same
    installation and PYTHONPATH on every rank); anything else runs as given."""
    if not command:
        raise NetBedError("no command given: put it after --, e.g. `netbed.py run --ranks 2 -- mpiopt run ...`")
    if command[0] == "mpiopt":
        return [sys.executable, "-m", "mpiopt", *command[1:]]
    return list(command)


def run_job(bed: NetBed, command: Sequence[str], timeout: Optional[float] = None,
            launch_by: str = "mpmd") -> Dict[str, object]:
    """Run ``command`` once in each of ``bed``'s namespaces as one MPI job (output passed through).

    ``launch_by``: ``mpmd`` (one mpiexec, each rank started inside its namespace) or ``hostfile``
    (mpiexec -f with the ranks' addresses, see :meth:`NetBed.hostfile_launch`). The job gets this
    process's environment, mpiopt's launch settings for its rank count and the bed's MPI environment; it runs
    in its own process group, ended on any failure, timeout or signal. Returns the exit code, the
    seconds it took and the bytes each NIC sent and received meanwhile."""
    with tempfile.TemporaryDirectory(prefix="netbed-") as tmp:
        if launch_by == "hostfile":
            cmd = bed.hostfile_launch(mpiexec_path(), job_argv(command), Path(tmp))
        else:
            cmd = bed.mpmd(mpiexec_path(), job_argv(command))
        info = _timed_job(bed, cmd, timeout)
    return {**info, "launch": launch_by}


def _timed_job(bed: NetBed, cmd: List[str], timeout: Optional[float]) -> Dict[str, object]:
    before = bed.counters()
    start = time.monotonic()
    rc = run_in_group(cmd, launch.mpi_env(bed.ranks, bed.env()), timeout)
    seconds = time.monotonic() - start
    return {"returncode": rc, "seconds": seconds, **nic_traffic(before, bed.counters()), "bed": bed.describe()}


def nic_traffic(before: List[Dict[str, int]], after: List[Dict[str, int]]) -> Dict[str, object]:
    """The bytes each NIC sent and received between two :meth:`NetBed.counters` readings, and the total sent."""
    per_rank = [{k: a[k] - b[k] for k in ("tx_bytes", "rx_bytes")} for a, b in zip(after, before)]
    return {"nic_bytes": per_rank, "nic_tx_bytes": sum(r["tx_bytes"] for r in per_rank)}


def run_in_group(cmd: Sequence[str], env: Dict[str, str], timeout: Optional[float], stdout=None, stderr=None) -> int:
    """Run ``cmd`` (an mpiexec job) in a process group of its own and return its exit code; on a
    timeout, a failure or a signal here the whole group is ended first. ``stdout`` / ``stderr``: as
    for ``subprocess.Popen`` (default: this process's)."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=stdout, stderr=stderr)
    try:
        return proc.wait(timeout=timeout)
    except BaseException:
        end_group([proc])
        raise


def end_group(procs: Sequence[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM the process group led by ``procs[0]``, SIGKILL it after ``grace`` seconds, and reap
    ``procs``: every member is waited for, also when the leader exited first."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if all(p.poll() is not None for p in procs):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(procs[0].pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)


def _report_run(ranks: int, rate: str, info: Dict[str, object], json_out: Optional[str]) -> None:
    per = ", ".join(f"r{r}: {b['tx_bytes']}" for r, b in enumerate(info["nic_bytes"]))
    print(f"netbed: {ranks} ranks at {rate}: the job exited {info['returncode']} after {info['seconds']:.1f} s; "
          f"{info['nic_tx_bytes']} bytes crossed the NICs (sent per rank: {per})", file=sys.stderr)
    if json_out:
        Path(json_out).write_text(json.dumps(info, indent=1) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="build the bed, time a raw float32 Allreduce across it, tear it down")
    c.add_argument("--ranks", type=int, default=4)
    c.add_argument("--rate", default="1gbit")
    c.add_argument("--delay-ms", type=float, default=0.0)
    c.add_argument("--bytes", type=float, default=4e7)
    c.add_argument("--sweep", action="store_true", help="also time isolated messages and Allreduces of 4 KiB to "
                   "64 MiB, each after a pause, and print measured / ideal per size")
    c.add_argument("--json", help="write the check (and the sweep) here")
    r = sub.add_parser("run", help="run a command (e.g. `mpiopt run ...`) once per rank across the bed, "
                                   "report the bytes that crossed the NICs")
    r.add_argument("--ranks", type=int, required=True)
    r.add_argument("--rate", default="1gbit")
    r.add_argument("--delay-ms", type=float, default=0.0)
    r.add_argument("--timeout", type=float, default=None, help="seconds the job may take (default: no limit)")
    r.add_argument("--launch", choices=("mpmd", "hostfile"), default="mpmd",
                   help="mpmd: one mpiexec starting each rank in its namespace; hostfile: mpiexec -f with the "
                        "ranks' addresses and an ssh stand-in, as on a cluster")
    r.add_argument("--json", help="also write the exit code, seconds and NIC byte counts here")
    r.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command each rank runs")
    sub.add_parser("cleanup", help="remove the namespaces a crashed run left behind")
    args = p.parse_args(argv)
    try:
        if args.cmd == "cleanup":
            with open_lock(LOCK):
                preflight()
                removed = cleanup()
            print(f"removed: {', '.join(removed) or 'nothing'}")
            return 0
        if args.cmd == "run":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            job_argv(command)  # a missing command fails before the bed is built
            with NetBed(args.ranks, args.rate, args.delay_ms) as bed:
                info = run_job(bed, command, args.timeout, args.launch)
            _report_run(args.ranks, args.rate, info, args.json)
            return info["returncode"] if info["returncode"] >= 0 else 128 - info["returncode"]
        with NetBed(args.ranks, args.rate, args.delay_ms) as bed:
            info = check_links(bed, int(args.bytes))
            if args.sweep:
                info["sweep"] = check_sizes(bed)
                info["bed"] = bed.describe()
        if args.json:
            Path(args.json).write_text(json.dumps(info, indent=1) + "\n")
        if args.sweep:
            print(sweep_table(args.rate, args.ranks, info["sweep"]))
        print(json.dumps({k: v for k, v in info.items() if k not in ("sweep", "bed")}, indent=1))
        print(f"{args.ranks} ranks at {args.rate}: float32 Allreduce of {int(args.bytes)} bytes took "
              f"{info['median_seconds']:.3f} s, {info['ratio_to_link_bound']:.2f}x the link bound "
              f"{info['link_bound_seconds']:.3f} s; {info['nic_tx_bytes']} bytes crossed the NICs")
        return 0
    except NetBedError as e:
        print(f"netbed: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
