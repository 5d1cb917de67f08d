"""The released 0.3/0.4 API, in one place: its classes, call styles and private step, adapted to the core.

pacifica-cli and pacifica-dispatcher call these as the released versions
declared them, private names included; nothing else in the library calls
them.  The core (:class:`BaseCartAPI`, :class:`BaseDownloader`) has one
signature per method:

* :class:`CartAPI` adds ``setup_cart(yield_files)`` and ``wait_for_cart``;
* :class:`Downloader` takes a :class:`CartAPI` or a URL (with the released
  keywords ``cart_api_url``, ``proto``, ``addr``, ``port``, ``auth``, ...,
  which go to the :class:`CartAPI` it builds), and adds ``cloudevent`` and
  ``transactioninfo`` in the seed's style ``(event)`` and 0.4's
  ``(location, event)``, and ``_download_from_url`` in 0.4.1's
  ``(location, cart_url, filename)`` and 0.3.0's ``(cart_url, filename)``;
* :class:`CloudEvent` and :class:`TransactionInfo` turn an event or
  document into the ``yield_files`` callable ``setup_cart`` takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Callable, overload

from ._cartapi import BaseCartAPI
from ._config import check_seconds
from ._downloader import BaseDownloader, PathLike
from ._events import event_records
from ._exceptions import CartTimeoutError, InvalidInputError
from ._polling import Polls, PollSchedule
from ._records import entries_callable, validate_records
from ._retry import RetryBudget
from ._transactions import transaction_records

#: The keywords a Downloader passes to the CartAPI it builds (besides the URL).
_CART_API_KEYWORDS = ("proto", "addr", "port", "auth", "session", "extra_args", "timeouts", "retry")
#: The keywords of :class:`BaseDownloader` itself; every other keyword of :class:`Downloader` goes to its CartAPI.
_DOWNLOADER_KEYWORDS = ("keep_cart", "overwrite", "progress", "limits", "trust_verified", "lost_carts")


class CartAPI(BaseCartAPI):
    """Creates carts on a Cartd endpoint, waits for them, fetches and deletes them.

    >>> api = CartAPI("http://127.0.0.1:8081")                      # doctest: +SKIP
    >>> url = api.setup_cart(CloudEvent.cloudevent(event))           # doctest: +SKIP
    >>> api.wait_for_cart(url, timeout=600)                          # doctest: +SKIP
    'http://127.0.0.1:8081/6f1c...'
    """

    def setup_cart(self, yield_files: Callable[[], Iterable[dict[str, Any]]]) -> str:
        """Post the files ``yield_files()`` yields as a new cart; return the cart's full URL.

        Each item is a Cartd ``fileids`` entry (``id``, ``path``,
        ``hashtype``, ``hashsum``).  The entries are checked first: a bad one,
        or none at all (Cartd would leave an empty cart staging forever),
        raises :class:`InvalidInputError` and nothing is sent.  The cart's id
        is chosen here, so a POST whose answer was lost is safely sent again.
        """
        records = validate_records(
            ((f"fileids[{index}]", entry) for index, entry in enumerate(yield_files())), what="cart's files"
        )
        if not records:
            raise InvalidInputError("a cart needs at least one file; Cartd leaves an empty cart staging forever")
        cart_url = self.new_cart_url()
        self.post_cart(cart_url, records)
        return cart_url

    def wait_for_cart(
        self,
        cart_url: str,
        timeout: float | None = None,
        on_poll: Callable[[str], None] | None = None,
        budget: RetryBudget | None = None,
        schedule: PollSchedule = PollSchedule(),
    ) -> str:
        """Poll the cart with ``HEAD`` (:meth:`probe`) on ``schedule`` until it is ready; return ``cart_url``.

        ``timeout`` is the deadline in seconds of wall-clock time (default
        ``Timeouts.wait``, an hour).  The integer the released versions took
        (``wait_for_cart(url, 180)``, which 0.4.1 counted as polls one second
        apart) means the same number of seconds here.  Raises
        :class:`CartFailedError` with the server's reason when staging
        failed, :class:`CartNotFoundError` at once when the cart does not
        exist, :class:`CartTimeoutError` when the deadline passes.
        ``on_poll(status)`` is called after each poll that finds the cart
        still staging.
        """
        limit = self.transport.timeouts.wait if timeout is None else check_seconds(timeout, "timeout")
        cart_url = self._clean(cart_url)
        polls = Polls(schedule, limit, cart_url)
        for deadline in polls:
            try:
                status = self.probe(cart_url, deadline=deadline, budget=budget)
            except CartTimeoutError as err:
                raise polls.timed_out() from err
            polls.answered(status)
            if status != "ready" and on_poll is not None:
                on_poll(status)
        return cart_url


class CloudEvent:
    """Reads the files of a Pacifica Notifications CloudEvent.

    >>> files = CloudEvent.cloudevent(event)   # doctest: +SKIP
    >>> list(files())[0]                        # doctest: +SKIP
    {'id': '34', 'path': 'a/b/foo.txt', 'hashtype': 'sha1', 'hashsum': 'f1d2...'}
    """

    @staticmethod
    def cloudevent(cloudevent: Any) -> Callable[[], Iterator[dict[str, str]]]:
        """Return a callable yielding the event's files as Cartd ``fileids`` entries.

        The event is checked at once: a bad record raises
        :class:`InvalidInputError` here, before any cart is made.  The
        callable is what :meth:`CartAPI.setup_cart` takes.
        """
        return entries_callable(event_records(cloudevent))

    #: The name the released 0.x versions used.
    yield_files = cloudevent


class TransactionInfo:
    """Reads the files of a Pacifica Policy transaction-info document.

    >>> TransactionInfo.transactioninfo({"files": {}})()   # doctest: +ELLIPSIS
    <generator object ...>
    """

    @staticmethod
    def transactioninfo(transinfo: Any) -> Callable[[], Iterator[dict[str, str]]]:
        """Return a callable yielding the document's files as Cartd ``fileids`` entries.

        The document is checked at once; a bad entry raises
        :class:`InvalidInputError` before any cart is made.
        """
        return entries_callable(transaction_records(transinfo))

    #: The name the released 0.x versions used.
    yield_files = transactioninfo


class Downloader(BaseDownloader):
    """Downloads the files of Pacifica events and documents through a Cartd cart.

    The seed's style: the download directory and the Cartd URL up front;
    each call returns the paths of the files.

    >>> down = Downloader(down_path, "http://127.0.0.1:8081")      # doctest: +SKIP
    >>> down.cloudevent(cloud_event)                                # doctest: +SKIP
    ['/tmp/x/data/a/b/foo.txt', ...]

    The 0.4 style, still supported: the location with each call, which then
    returns None, as 0.4.1 did (``sys.exit(main())`` callers exit 0).

    >>> down = Downloader(cart_api_url="http://127.0.0.1:8081")    # doctest: +SKIP
    >>> down.cloudevent(down_path, cloud_event, timeout=600, filename="data")  # doctest: +SKIP
    """

    cart_api: CartAPI

    def __init__(
        self, location: PathLike | None = None, cart_api: CartAPI | str | None = None, **keywords: Any
    ) -> None:
        """Prepare downloads into ``location`` through ``cart_api``: a :class:`CartAPI`, or the Cartd URL.

        Given a URL (or nothing), a :class:`CartAPI` is built from it and from
        the keywords that are its own (``cart_api_url``, ``proto``, ``addr``,
        ``port``, ``auth``, ``session``, ``extra_args``, ``timeouts``,
        ``retry``: see :class:`CartAPI`); given a :class:`CartAPI`, those
        keywords are refused.  The rest of this text says what each means.

        ``location`` is the download directory, created when needed (it may
        instead be given with each call).  ``cart_api_url`` defaults to the
        environment as in 0.4.1 (``CARTD_CART_API_URL``; else ``proto``,
        ``addr`` and ``port``, each from its keyword or ``CARTD_PROTO``,
        ``CARTD_ADDR``, ``CARTD_PORT``; else ``http://127.0.0.1:8081``).
        ``auth``: a requests auth object, a ``(user, password)`` tuple, or a
        dict of requests arguments (``auth``, ``cert``, ``verify``,
        ``headers``, ``proxies``).  ``session``: a ``requests.Session`` to
        reuse.  ``extra_args``: more members of the cart request, e.g.
        ``{"bundle": True}``.  ``timeouts`` and ``retry``: see
        :class:`Timeouts` and :class:`Retry`.  ``keep_cart=True`` leaves the
        cart on the server after the download.  ``overwrite=False`` refuses
        to replace an existing file whose content differs, instead of
        replacing it once the new one is verified.  ``progress`` is called
        with a :class:`Progress` at each step (see :mod:`.progress`).
        ``limits`` says how large events are cut into carts and how many
        stage at once (see :class:`CartLimits`).  ``trust_verified=False``
        hashes every existing file again instead of trusting the record of
        files verified earlier and unchanged since (see :mod:`.verified`).
        ``lost_carts`` says when a cart that stays staging gets a spare (see
        :class:`LostCarts`).  A bad argument raises :class:`InvalidInputError`.
        """
        own = {name: keywords.pop(name) for name in _DOWNLOADER_KEYWORDS if name in keywords}
        if "cart_api_url" in keywords:
            if cart_api is not None:
                raise InvalidInputError("the downloader cannot be built", ["cart_api and cart_api_url both given"])
            cart_api = keywords.pop("cart_api_url")
        if isinstance(cart_api, BaseCartAPI):
            if keywords:
                raise InvalidInputError(
                    "the downloader cannot be built",
                    [f"{name} is a setting of the CartAPI given, not of the downloader" for name in sorted(keywords)],
                )
            api = cart_api
        elif cart_api is None or isinstance(cart_api, str):
            unknown = sorted(set(keywords) - set(_CART_API_KEYWORDS))
            if unknown:  # said here: a TypeError from inside CartAPI would name no argument of the caller's
                raise InvalidInputError(
                    "the downloader cannot be built", [f"unexpected keyword {key!r}" for key in unknown]
                )
            api = CartAPI(cart_api, **keywords)
        else:
            raise InvalidInputError(
                "the downloader cannot be built",
                [f"cart_api must be a CartAPI or a URL, not {type(cart_api).__name__}"],
            )
        super().__init__(location, api, **own)

    @overload
    def cloudevent(
        self, cloudevent: Any, *, filename: str = ..., timeout: float | None = ..., deadline: float | None = ...
    ) -> list[str]: ...

    @overload
    def cloudevent(
        self,
        location: PathLike,
        cloudevent: Any,
        *,
        filename: str = ...,
        timeout: float | None = ...,
        deadline: float | None = ...,
    ) -> None: ...

    def cloudevent(self, *args: Any, **kwargs: Any) -> list[str] | None:
        """Download the files of a Pacifica Notifications CloudEvent.

        ``down.cloudevent(event)`` returns the files' paths;
        ``down.cloudevent(location, event)``, the 0.4 style (the location
        given with the call, also as ``location=``), returns None as 0.4.1
        did.  Keywords: ``filename`` (the folder inside the location the
        files land in, default ``"data"``), ``timeout`` (seconds to wait for
        the cart, default an hour), ``deadline`` (seconds for the whole
        call).  Files land in ``location/filename/<subdir>/<name>``.
        """
        location, event, options = call_style(args, kwargs, "cloudevent")
        paths = self._download(event_records(event), location, **options)
        return None if location is not None else paths

    @overload
    def transactioninfo(
        self, transinfo: Any, *, filename: str = ..., timeout: float | None = ..., deadline: float | None = ...
    ) -> list[str]: ...

    @overload
    def transactioninfo(
        self,
        location: PathLike,
        transinfo: Any,
        *,
        filename: str = ...,
        timeout: float | None = ...,
        deadline: float | None = ...,
    ) -> None: ...

    def transactioninfo(self, *args: Any, **kwargs: Any) -> list[str] | None:
        """Download the files of a Pacifica Policy transaction-info document.

        ``down.transactioninfo(doc)`` returns the files' paths;
        ``down.transactioninfo(location, doc)`` returns None, as 0.4.1 did;
        keywords as :meth:`cloudevent`.
        """
        location, document, options = call_style(args, kwargs, "transinfo")
        paths = self._download(transaction_records(document), location, **options)
        return None if location is not None else paths

    def _download_from_url(self, *args: Any, **kwargs: Any) -> None:
        """Fetch a ready cart by its URL into ``location/filename``; delete it after (the released private step).

        pacifica-dispatcher calls it after ``cart_api.setup_cart()`` and
        ``cart_api.wait_for_cart()``, with 0.4.1's arguments
        ``(location, cart_url, filename)``; 0.3.0 took ``(cart_url,
        filename)`` on a downloader built with its location.  It gives the
        guarantees of the rest of the library: the tar is read strictly,
        nothing partial appears under a final name, and the cart is deleted
        after (unless ``keep_cart``).  A cart created by this downloader's
        :class:`CartAPI` has every file verified against the records posted
        and must hold exactly those; for a cart URL it never saw, there are
        no hashes to check (a warning says so) and any regular file below
        the cart's folder is taken, under the same rules of safety.
        """
        location, cart_url, filename = url_call_style(args, kwargs)
        self.fetch_cart(location, cart_url, filename)


def call_style(args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> tuple[PathLike | None, Any, dict[str, Any]]:
    """Sort out ``(event)``, ``(location, event)`` and keyword calls; the location is None in the first."""
    location = kwargs.pop("location", None)
    if len(args) == 2 and location is None:
        location, document = args
    elif len(args) == 1 and name in kwargs:
        location, document = args[0], kwargs.pop(name)
    elif len(args) == 1:
        document = args[0]
    elif not args and name in kwargs:
        document = kwargs.pop(name)
    else:
        raise InvalidInputError(
            f"{name}() takes the {name} and optionally the location before it",
            [f"{len(args)} positional arguments, keywords: {sorted(kwargs) or 'none'}"],
        )
    unknown = sorted(set(kwargs) - {"filename", "timeout", "deadline"})
    if unknown:
        raise InvalidInputError(
            f"{name}() takes only the keywords filename, timeout and deadline",
            [f"unexpected keyword {key!r}" for key in unknown],
        )
    return location, document, kwargs


def url_call_style(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(location, cart_url, filename)`` from 0.4.1's three arguments or 0.3.0's ``(cart_url, filename)``."""
    three = len(args) + len(kwargs) >= 3 or "location" in kwargs
    names = ("location", "cart_url", "filename") if three else ("cart_url", "filename")
    given = dict(zip(names, args))
    problems = [f"{len(args)} positional arguments, at most {len(names)}"] if len(args) > len(names) else []
    problems += [f"{key!r} given twice" for key in kwargs if key in given]
    problems += [f"unexpected keyword {key!r}" for key in kwargs if key not in names]
    given.update(kwargs)
    if "cart_url" not in given:
        problems.append("no cart_url")
    if problems:
        raise InvalidInputError(
            "_download_from_url() takes (location, cart_url, filename), or (cart_url, filename) "
            "on a downloader built with its location",
            problems,
        )
    return given.get("location"), given["cart_url"], given.get("filename", "data")
