"""Ports for the servers the tests, benchmarks and ``make run`` start, safe to use side by side.

A port found free by binding port 0 lies in the kernel's ephemeral range: any
outgoing connection on the machine may take it between the check and the
server's own bind ("Address already in use"), and a second copy of the suite
may be handed the same one. So ports come from below the ephemeral range,
where the kernel never picks source ports, and each is reserved by a lock
(``flock``) on a file named after it in a directory every local user shares.
The lock belongs to the process that asked and ends with it however it ends,
so there is nothing stale to clean up; the servers are children of that
process and never outlive it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path

#: Where reservations live: one file per port, locked by the process that holds the port.
RESERVATIONS = Path(tempfile.gettempdir()) / "police-port-reservations"
#: Ports to choose from: below Linux's default ephemeral range (32768-60999) and above the
#: well-known services'.
PORT_RANGE = range(20_000, 32_000)
_ATTEMPTS = 2_000

#: the open, locked reservation files of this process (closing one would release its port)
_held: list[int] = []


def _reservation_directory() -> Path:
    try:
        RESERVATIONS.mkdir(mode=0o1777, exist_ok=True)
        if RESERVATIONS.stat().st_uid == os.getuid():
            # the mode given to mkdir is filtered by the umask; others must be able to add files
            RESERVATIONS.chmod(0o1777)
    except OSError as error:
        raise RuntimeError(f"cannot use {RESERVATIONS} for port reservations: {error}") from error
    return RESERVATIONS


def _reserve(port: int) -> int | None:
    """The locked reservation file's descriptor, or None when another process holds the port."""
    path = _reservation_directory() / str(port)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
    except PermissionError:
        return None  # another user's file we may not read: treat as taken
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return None
        raise
    return descriptor


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on and no other test process of this machine will be given.

    It stays reserved until this process ends."""
    chooser = random.SystemRandom()
    for _ in range(_ATTEMPTS):
        port = chooser.choice(PORT_RANGE)
        descriptor = _reserve(port)
        if descriptor is None:
            continue
        if _bindable(host, port):
            _held.append(descriptor)
            return port
        os.close(descriptor)
    raise RuntimeError(
        f"no free port in {PORT_RANGE.start}-{PORT_RANGE.stop - 1} after {_ATTEMPTS} attempts; "
        f"is something holding them (see {RESERVATIONS})?"
    )
