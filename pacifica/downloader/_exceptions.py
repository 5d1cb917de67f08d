"""Every error this library raises, in one shallow hierarchy.

Our exception hierarchy (public: importable from :mod:`pacifica.downloader`)::

    DownloaderError
    ├── InvalidInputError      the event, document or arguments cannot give a download; nothing was sent
    ├── PolicyError            the Policy service gave no transaction document
    ├── CartError              Cartd refused a request about a cart
    │   ├── CartNotFoundError  the cart does not exist (deleted, never created)
    │   ├── CartFailedError    Cartd could not stage it (its reason in ``server_message``)
    │   └── CartTimeoutError   not ready before ``Timeouts.wait``, or the call's deadline passed
    ├── TransferError          the server gave no sign of progress for ``Timeouts.progress``
    ├── IntegrityError         a file did not match its hash
    │   └── ManifestError      the cart lacked files asked for, or held others
    ├── UnsafeArchiveError     the tar tried to write outside its folder, or held links or devices
    └── DestinationError       the download directory cannot be written (full, read-only, a conflict)

    pacifica.downloader.tasks.RedeliveryError (DownloaderError): a queued download killed its worker too often
    SubscriptionError (DownloaderError): Notifications refused the event match (the subscribe command)

Internal, never meant to reach a caller (at the end of this module): ``Cancelled``, ``StreamBroken``,
``MalformedTar`` and ``CartLost`` (a :class:`CartTimeoutError`, as which it would reach a caller).

All of them derive from :class:`DownloaderError`, so ``except DownloaderError``
catches anything the library means to report.  Each class answers one question
a caller asks when a download fails: was my input wrong, did the cart fail on
the server, did the network give out, or did the data not check out?  Each
message says what happened and what to do about it.

No error carries a credential: its text is scrubbed of every secret a live
transport of the process holds (:func:`~.redaction.scrub_known`), its
``cart_url`` has no ``user:password@`` part, and a pickled error (how
multiprocessing, ``concurrent.futures`` and Celery's pickle serializer move
it) leaves its ``response`` behind, whose request holds the headers sent.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any

import requests

from ._redaction import redact, scrub_known


class DownloaderError(Exception):
    """Base class of every error raised by pacifica-downloader.

    ``response`` is the HTTP response that revealed the problem, when there
    was one; ``cart_url`` is the cart involved, when there was one.

    >>> try:
    ...     Downloader(location, cart_url).cloudevent(event)   # doctest: +SKIP
    ... except DownloaderError as error:
    ...     print("download failed:", error)
    """

    def __init__(self, message: str, *, cart_url: str | None = None, response: requests.Response | None = None) -> None:
        message = scrub_known(message)
        super().__init__(message)
        self.message = message
        self.cart_url = redact(cart_url) if cart_url else cart_url
        #: In this process only: a pickled error leaves it behind (see :meth:`__reduce__`).
        self.response = response

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle the type, text and attributes, without ``response`` (its request holds the headers sent)."""
        state = dict(self.__dict__, response=None)
        if isinstance(self, OSError):
            state["errno"] = self.errno
        return _rebuild, (type(self), self.args, state)


def _rebuild(kind: type[DownloaderError], args: tuple[Any, ...], state: dict[str, Any]) -> DownloaderError:
    """Unpickle an error without calling its ``__init__`` (whose arguments differ from class to class)."""
    error = kind.__new__(kind)
    error.args = args
    for name, value in state.items():
        setattr(error, name, value)
    return error


class InvalidInputError(DownloaderError, ValueError):
    """The event, document or arguments cannot be turned into a download.

    Raised before any request is sent.  ``problems`` lists every bad record
    or argument found, not just the first one.

    >>> InvalidInputError("the event cannot be downloaded", ["data[3]: missing '_id'"]).problems
    ["data[3]: missing '_id'"]
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = [scrub_known(problem) for problem in problems]
        if self.problems:
            message = "{}:\n  - {}".format(message, "\n  - ".join(self.problems))
        super().__init__(message)


class CartError(DownloaderError):
    """The cart service refused, lost or could not prepare the cart.

    >>> issubclass(CartFailedError, CartError) and issubclass(CartNotFoundError, CartError)
    True
    """


class CartNotFoundError(CartError):
    """The cart does not exist on the server (HTTP 404): it was deleted or never made.

    >>> CartAPI(url).wait_for_cart(deleted_cart_url)   # doctest: +SKIP
    Traceback (most recent call last):
    CartNotFoundError: the cart ... does not exist on the server (deleted, or never created)
    """


class CartFailedError(CartError):
    """The server reported that staging the cart failed (status ``error``).

    ``server_message`` holds the server's full message (often a traceback);
    the exception's own message keeps only its readable first and last lines.

    >>> CartFailedError("Cartd could not stage the cart: ...", server_message="Traceback ...").server_message
    'Traceback ...'
    """

    def __init__(
        self,
        message: str,
        *,
        server_message: str = "",
        cart_url: str | None = None,
        response: requests.Response | None = None,
    ) -> None:
        super().__init__(message, cart_url=cart_url, response=response)
        self.server_message = scrub_known(server_message)


class CartTimeoutError(CartError, TimeoutError):
    """The cart was not ready, or the download did not finish, before the deadline.

    >>> isinstance(CartTimeoutError("still staging after 600 s"), TimeoutError)
    True
    """


class TransferError(DownloaderError):
    """The connection to the cart service failed and retrying did not help.

    ``attempts`` lists, in order, why each attempt failed.

    >>> print(TransferError("GET failed", attempts=["ConnectionError: reset", "HTTP 503"]))
    GET failed (2 attempts):
      - ConnectionError: reset
      - HTTP 503
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: Sequence[str] = (),
        cart_url: str | None = None,
        response: requests.Response | None = None,
    ) -> None:
        self.attempts = [scrub_known(attempt) for attempt in attempts]
        if self.attempts:
            message = "{} ({} attempts):\n  - {}".format(message, len(self.attempts), "\n  - ".join(self.attempts))
        super().__init__(message, cart_url=cart_url, response=response)


class IntegrityError(DownloaderError):
    """A file's content does not match the hash the event promised.

    ``path`` is the file's path inside the download; ``expected`` and
    ``actual`` are the hex digests.  Nothing unverified is left on disk.

    >>> IntegrityError("a.txt does not match", path="a.txt", expected="ab12", actual="cd34").expected
    'ab12'
    """

    def __init__(
        self, message: str, *, path: str = "", expected: str = "", actual: str = "", cart_url: str | None = None
    ) -> None:
        super().__init__(message, cart_url=cart_url)
        self.path = path
        self.expected = expected
        self.actual = actual


class ManifestError(IntegrityError):
    """The set of files received is not the set requested.

    ``missing``, ``duplicated`` and ``unexpected`` list the paths concerned.

    >>> ManifestError("2 files missing", missing=["a.txt", "b.txt"]).missing
    ['a.txt', 'b.txt']
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Sequence[str] = (),
        duplicated: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        cart_url: str | None = None,
    ) -> None:
        super().__init__(message, cart_url=cart_url)
        self.missing = list(missing)
        self.duplicated = list(duplicated)
        self.unexpected = list(unexpected)


class UnsafeArchiveError(DownloaderError):
    """The server sent a tar entry that could write outside the download or is not a plain file.

    Links, devices, FIFOs, absolute names, ``..`` components and malformed
    archives are refused; nothing outside the download directory is touched.

    >>> raise UnsafeArchiveError("the tar entry 'data/a' is a symbolic link; refused")   # doctest: +SKIP
    """


class DestinationError(DownloaderError, OSError):
    """The download directory cannot take the files.

    Disk full, no permission, or a file that exists with other content when
    the caller asked not to overwrite.  ``path`` is the file concerned and
    ``errno`` the operating system's error number when there was one.

    >>> import errno
    >>> DestinationError("cannot write a.txt: disk full", path="a.txt", errno=errno.ENOSPC).errno == errno.ENOSPC
    True
    """

    def __init__(self, message: str, *, path: str = "", errno: int | None = None) -> None:
        DownloaderError.__init__(self, message)
        self.path = path
        self.errno = errno

    def __str__(self) -> str:
        return self.message


class PolicyError(DownloaderError):
    """The Policy service did not return a transaction-info document (unknown transaction, error, not JSON).

    >>> issubclass(PolicyError, DownloaderError)
    True
    """


# -- internal: raised and caught inside the library, never meant to reach a caller ------------------------


class Cancelled(Exception):
    """Internal: another cart of the same download failed, or the caller interrupted it."""


class StreamBroken(Exception):
    """The connection broke and could not be resumed in place; ``reason`` says why.

    Internal: the downloader catches it and starts the cart's stream over.
    """

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


class CartLost(CartTimeoutError):
    """A cart still "staging" ``lost_after`` seconds in: Cartd may have lost its tasks.

    Raised by :class:`~._polling.Polls` at its ``lost_after``; the cart's
    driver posts a spare of it (see ``LostCarts``) and waits again.  Should
    it reach a caller, it is the :class:`CartTimeoutError` it derives from.
    """

    def __init__(self, message: str, cart_url: str, waited: float) -> None:
        super().__init__(message, cart_url=cart_url)
        self.waited = waited


class MalformedTar(Exception):
    """A header is not a valid tar header; ``first`` is True when it was the stream's first."""

    def __init__(self, message: str, first: bool) -> None:
        super().__init__(message)
        self.first = first


def os_error(err: OSError, path: str, doing: str) -> DestinationError:
    """Turn an OSError while writing ``path`` into a DestinationError that says what to do."""
    advice = {
        errno.ENOSPC: "the disk is full; free space or choose another location",
        errno.EDQUOT: "the disk quota is exhausted; free space or choose another location",
        errno.EACCES: "permission denied; choose a location you can write to",
        errno.EPERM: "operation not permitted; choose a location you can write to",
        errno.EROFS: "the filesystem is read-only; choose another location",
    }.get(err.errno or 0, "check the download location")
    return DestinationError(f"cannot {doing} {path}: {err.strerror or err} ({advice})", path=path, errno=err.errno)
