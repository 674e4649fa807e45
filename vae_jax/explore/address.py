"""Where the explorer serves: the host and port checked before anything loads, the address
to print, and whether other machines can reach it."""

from __future__ import annotations

import errno
import ipaddress
import socket

from vae_jax.runtime.errors import InputError

DEFAULT_PORT = 7860  # gradio's
PORT_IN_USE = (errno.EADDRINUSE,)
NOT_AN_ADDRESS_HERE = (errno.EADDRNOTAVAIL,)


def _resolved(host: str, port: int) -> tuple[int, tuple]:
    """(address family, socket address) the server would bind for host:port, or InputError
    naming --host."""
    try:
        family, _, _, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                    flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise InputError(f"--host {host!r} is not an address or a name this machine knows "
                         f"({reason}): use 127.0.0.1 for this machine only") from None
    return family, where


def check_address(host: str, port: int) -> None:
    """Raises InputError (one line, naming the flag at fault) when the server could not bind
    host:port as it does (SO_REUSEADDR: a server listening there refuses, a closed one's
    leftovers do not)."""
    family, where = _resolved(host, port)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(where)
    except OSError as error:
        if error.errno in PORT_IN_USE:
            raise InputError(f"--port {port} on {host} is in use: choose another with --port") \
                from None
        if error.errno in NOT_AN_ADDRESS_HERE:
            raise InputError(f"--host {host} is not an address of this machine: use "
                             f"127.0.0.1 for this machine only") from None
        raise InputError(f"--port {port} on {host} cannot be used ({error.strerror}): choose "
                         f"another with --port") from None


def page_url(host: str, port: int) -> str:
    """The address the page is served at, as a browser takes it."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def exposure_warning(host: str, port: int) -> str | None:
    """A warning when `host` is not loopback: other machines can reach the page."""
    _, where = _resolved(host, port)
    address = ipaddress.ip_address(where[0].split("%")[0])
    if address.is_loopback:
        return None
    if address.is_unspecified:
        return (f"--host {host} serves the page on every network interface: other machines "
                f"that reach this one can open it at port {port}")
    return (f"--host {host} serves the page where other machines can reach it: use "
            f"127.0.0.1 for this machine only")
