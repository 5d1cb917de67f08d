"""The watchdog: a try whose answer does not come by the budget's patience is cut off, even when the server
trickles its status line and headers one byte at a time (which no socket timeout catches).  A stub Cartd behind
the fault proxy; the patience is scaled down to a second so the test is short."""

from __future__ import annotations

import requests
from support.fault_proxy import Fault, FaultProxy
from support.stub_cartd import StubCartd

from pacifica.downloader import CartAPI, Retry, Timeouts, TransferError
from pacifica.downloader._watchdog import WatchedAdapter

PATIENT_SOCKET = Timeouts(read=30.0, progress=1.0)  # every socket wait is far longer than the patience


def test_trickled_headers_are_cut_off_at_the_patience() -> None:
    with (
        StubCartd() as cartd,
        FaultProxy.for_url(
            cartd.url, [Fault("HEAD", "trickle_head", interval=0.05, count=None)], timeout=10.0, max_hold=30.0
        ) as proxy,
    ):
        api = CartAPI(proxy.url, timeouts=PATIENT_SOCKET, retry=Retry(attempts=5, backoff=0.01))
        try:
            api.probe(f"{proxy.url}/some-cart")
        except TransferError as error:
            assert "no sign of progress from the server for 1 s" in str(error), error
            assert error.attempts and "cut off" in error.attempts[-1], error.attempts
        else:
            raise AssertionError("a trickled answer was waited for")
        (request,) = proxy.requests_for("HEAD")
        assert request.finished.wait(10), "the proxy still trickles"
        assert request.client_gave_up, "the client hung up; the proxy did not end the trickle"
        assert request.body_bytes > 0, "some header bytes had arrived: the socket never timed out"


def test_a_default_session_gets_the_watched_adapter_with_its_settings() -> None:
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=33, max_retries=2))
    CartAPI("http://127.0.0.1:1", session=session)
    adapter = session.get_adapter("http://127.0.0.1:1/")
    assert isinstance(adapter, WatchedAdapter)
    # The pool size, read where it takes effect: requests keeps it in no public attribute.
    assert adapter.poolmanager.connection_pool_kw["maxsize"] == 33 and adapter.max_retries.total == 2


def test_a_session_with_an_adapter_of_its_own_keeps_it() -> None:
    class Own(requests.adapters.HTTPAdapter):
        pass

    session = requests.Session()
    own = Own()
    session.mount("https://", own)
    CartAPI("https://cartd.example", session=session)
    assert session.get_adapter("https://cartd.example/") is own
