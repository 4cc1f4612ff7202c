"""Name resolution with a deadline, for the apps' connections to each other."""

from __future__ import annotations

import socket
import threading


class ResolveError(OSError):
    """The name could not be resolved in time (or at all)."""


# Name lookups in flight at most; beyond that, callers fail fast rather than start more threads.
_LOOKUPS = threading.BoundedSemaphore(64)


def resolve(host: str, port: int, timeout: float) -> list[str]:
    """The addresses of ``host`` (sorted, without duplicates), or ResolveError within ``timeout`` seconds.

    The system resolver has no deadline of its own: on a Docker network with ``internal: true``, the
    name of a stopped container takes ~10 s to fail (the embedded DNS server tries to forward it
    upstream). So the lookup runs in a daemon thread, abandoned when the deadline passes.
    """
    if not _LOOKUPS.acquire(blocking=False):
        raise ResolveError(f"cannot resolve {host}: too many lookups are hanging")
    answer: list[list[str] | OSError] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            answer.append(sorted({str(info[4][0]) for info in infos}))
        except OSError as exc:
            answer.append(exc)
        finally:
            _LOOKUPS.release()
            done.set()

    threading.Thread(target=lookup, name=f"resolve {host}", daemon=True).start()
    if not done.wait(timeout):
        raise ResolveError(f"cannot resolve {host}: no answer within {timeout:g}s")
    if isinstance(answer[0], OSError):
        raise ResolveError(f"cannot resolve {host}: {answer[0]}")
    return answer[0]
