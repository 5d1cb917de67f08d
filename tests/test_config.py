"""Server-free tests of configuration: the cart URL, retry and timeout policies, transport helpers, packaging."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import sys
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import requests

import pacifica.downloader as downloader
from pacifica.downloader import InvalidInputError, LostCarts, Retry, Timeouts
from pacifica.downloader import _retry as retry_module
from pacifica.downloader._config import DEFAULT_CART_API_URL, resolve_cart_url
from pacifica.downloader._redaction import summarize
from pacifica.downloader._transport import redact, request_kwargs

CARTD_VARS = ("CARTD_CART_API_URL", "CARTD_PROTO", "CARTD_ADDR", "CARTD_PORT")


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in CARTD_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- resolve_cart_url -------------------------------------------------------------------


def test_default_url(clean_env: pytest.MonkeyPatch) -> None:
    assert DEFAULT_CART_API_URL == "http://127.0.0.1:8081"
    assert resolve_cart_url() == "http://127.0.0.1:8081"
    assert resolve_cart_url(None) == "http://127.0.0.1:8081"


def test_argument_wins(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CARTD_CART_API_URL", "http://env-url:1/cart")
    clean_env.setenv("CARTD_ADDR", "env-addr")
    assert resolve_cart_url("https://arg-url:2/cart") == "https://arg-url:2/cart"


def test_cart_api_url_variable_beats_parts(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CARTD_CART_API_URL", "http://env-url:1/cart")
    clean_env.setenv("CARTD_PROTO", "https")
    clean_env.setenv("CARTD_ADDR", "env-addr")
    clean_env.setenv("CARTD_PORT", "9999")
    assert resolve_cart_url() == "http://env-url:1/cart"


def test_parts_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CARTD_PROTO", "https")
    clean_env.setenv("CARTD_ADDR", "cart.internal")
    clean_env.setenv("CARTD_PORT", "8443")
    assert resolve_cart_url() == "https://cart.internal:8443"


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("CARTD_PROTO", "https", "https://127.0.0.1:8081"),
        ("CARTD_ADDR", "10.0.0.5", "http://10.0.0.5:8081"),
        ("CARTD_PORT", "9000", "http://127.0.0.1:9000"),
    ],
)
def test_each_part_defaults_alone(clean_env: pytest.MonkeyPatch, name: str, value: str, expected: str) -> None:
    clean_env.setenv(name, value)
    assert resolve_cart_url() == expected


def test_explicit_environ_mapping(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CARTD_ADDR", "ignored")
    assert resolve_cart_url(environ={}) == "http://127.0.0.1:8081"
    assert resolve_cart_url(environ={"CARTD_CART_API_URL": "http://m:1/"}) == "http://m:1"
    assert resolve_cart_url(environ={"CARTD_ADDR": "m", "CARTD_PORT": "2"}) == "http://m:2"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://127.0.0.1:8081/", "http://127.0.0.1:8081"),
        ("http://host/cart/", "http://host/cart"),
        ("https://host/cart//", "https://host/cart"),
        ("http://host/cart", "http://host/cart"),
    ],
)
def test_trailing_slash_stripped(clean_env: pytest.MonkeyPatch, url: str, expected: str) -> None:
    assert resolve_cart_url(url) == expected
    clean_env.setenv("CARTD_CART_API_URL", url)
    assert resolve_cart_url() == expected


@pytest.mark.parametrize("url", ["ftp://host/cart", "127.0.0.1:8081", "file:///tmp/x", "host/cart", "//host/cart"])
def test_bad_scheme_refused(clean_env: pytest.MonkeyPatch, url: str) -> None:
    with pytest.raises(InvalidInputError, match="http"):
        resolve_cart_url(url)
    clean_env.setenv("CARTD_CART_API_URL", url)
    with pytest.raises(InvalidInputError):
        resolve_cart_url()


def test_bad_proto_variable_refused(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CARTD_PROTO", "ftp")
    with pytest.raises(InvalidInputError):
        resolve_cart_url()


def test_non_string_url_refused(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInputError):
        resolve_cart_url(b"http://host/cart")  # type: ignore[arg-type]


# -- Retry --------------------------------------------------------------------------------


def test_retry_defaults() -> None:
    policy = Retry()
    assert policy.attempts is None, "no count of tries: the patience since the last progress bounds a download"
    assert policy.backoff == 0.5
    assert policy.backoff_max == 10.0
    assert policy.jitter == 0.5
    assert policy.statuses == frozenset({408, 429, 500, 502, 503, 504})
    assert policy.respect_retry_after is True


@pytest.mark.parametrize("field, value", [("attempts", 3), ("backoff", 1.0), ("statuses", frozenset())])
def test_retry_is_immutable(field: str, value: Any) -> None:
    policy = Retry()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(policy, field, value)
    assert getattr(policy, field) == getattr(Retry(), field)


def test_retry_statuses_frozen_and_hashable() -> None:
    policy = Retry(statuses=[500, 503])  # type: ignore[arg-type]
    assert isinstance(policy.statuses, frozenset)
    assert policy.statuses == {500, 503}
    hash(policy)
    assert policy == Retry(statuses=frozenset({503, 500}))


def test_retry_replace() -> None:
    policy = Retry()
    changed = policy.replace(attempts=10)
    assert changed.attempts == 10 and policy.attempts is None
    with pytest.raises(ValueError):
        policy.replace(attempts=0)


@pytest.mark.parametrize(
    "changes",
    [
        {"attempts": 0},
        {"attempts": -1},
        {"attempts": True},
        {"attempts": 2.0},
        {"attempts": "3"},
        {"backoff": -0.1},
        {"backoff_max": -1},
        {"jitter": -0.1},
        {"jitter": 1.5},
    ],
)
def test_retry_validation(changes: Any) -> None:
    with pytest.raises(ValueError):
        Retry(**changes)


@pytest.mark.parametrize("changes", [{"backoff": math.nan}, {"backoff_max": math.nan}, {"jitter": math.nan}])
def test_retry_refuses_nan(changes: Any) -> None:
    """NaN passes every ``<`` test; a NaN delay later makes ``time.sleep`` raise ValueError mid-download."""
    with pytest.raises(ValueError):
        Retry(**changes)


def test_retry_edge_values_accepted() -> None:
    Retry(attempts=1, backoff=0, backoff_max=0, jitter=0)
    Retry(jitter=1.0)


def test_delay_without_jitter_doubles_then_caps() -> None:
    policy = Retry(backoff=0.5, backoff_max=30.0, jitter=0.0)
    assert [policy.delay(attempt) for attempt in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


@pytest.mark.parametrize("attempt", [1, 10, 60, 100, 1100, 5000])
def test_delay_cap_holds_for_any_attempt(attempt: int) -> None:
    """``attempts`` has no upper bound, so any attempt number may reach delay()."""
    policy = Retry(attempts=attempt + 1, backoff=0.5, backoff_max=30.0, jitter=0.0)
    delay = policy.delay(attempt)
    assert 0 <= delay <= 30.0


def test_delay_jitter_bounds_sampled() -> None:
    policy = Retry(backoff=1.0, backoff_max=100.0, jitter=0.5)
    for attempt in range(1, 7):
        base = min(2.0 ** (attempt - 1), 100.0)
        samples = [policy.delay(attempt) for _ in range(200)]
        assert all(base * 0.5 <= sample <= base for sample in samples)
        assert len(set(samples)) > 1  # jitter actually varies


@pytest.mark.parametrize("draw, factor", [(0.0, 1.0), (0.5, 0.875), (0.999999, 0.75)])
def test_delay_jitter_exact(monkeypatch: pytest.MonkeyPatch, draw: float, factor: float) -> None:
    monkeypatch.setattr(retry_module.random, "random", lambda: draw)
    policy = Retry(backoff=2.0, backoff_max=100.0, jitter=0.25)
    assert policy.delay(3) == pytest.approx(8.0 * factor, rel=1e-5)


def test_delay_growth_with_jitter_stays_under_cap() -> None:
    policy = Retry(backoff=0.5, backoff_max=3.0, jitter=0.5)
    for _ in range(100):
        assert 1.5 <= policy.delay(10) <= 3.0


@pytest.mark.parametrize("header, expected", [("5", 5.0), ("0", 0.0), (" 7 ", 7.0), ("2.5", 2.5), ("-3", 0.0)])
def test_retry_after_seconds(header: str, expected: float) -> None:
    assert Retry(jitter=0.5).delay(1, header) == expected


def test_retry_after_capped_by_backoff_max() -> None:
    assert Retry(backoff_max=30.0).delay(1, "120") == 30.0
    assert Retry(backoff_max=10.0).delay(1, "inf") == 10.0


def test_retry_after_http_date() -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=20)
    header = format_datetime(when, usegmt=True)
    delay = Retry(backoff_max=30.0).delay(1, header)
    assert 17.0 <= delay <= 20.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    header = format_datetime(datetime.now(timezone.utc) - timedelta(hours=1), usegmt=True)
    assert Retry().delay(3, header) == 0.0


def test_retry_after_http_date_capped() -> None:
    header = format_datetime(datetime.now(timezone.utc) + timedelta(hours=1), usegmt=True)
    assert Retry(backoff_max=30.0).delay(1, header) == 30.0


@pytest.mark.parametrize("header", ["soon", "", "Mon, 99 Foo 2020"])
def test_retry_after_unparsable_falls_back(header: str) -> None:
    assert Retry(backoff=4.0, jitter=0.0).delay(2, header) == 8.0


def test_retry_after_ignored_when_not_respected() -> None:
    assert Retry(backoff=1.0, jitter=0.0, respect_retry_after=False).delay(1, "25") == 1.0


# -- Timeouts -----------------------------------------------------------------------------


def test_timeouts_defaults_and_replace() -> None:
    limits = Timeouts()
    assert (limits.connect, limits.read, limits.wait, limits.stall, limits.progress, limits.deadline) == (
        10.0,
        60.0,
        3600.0,
        30.0,
        60.0,
        None,
    )
    changed = limits.replace(wait=600)
    assert changed.wait == 600 and limits.wait == 3600.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.wait = 1  # type: ignore[misc]


@pytest.mark.parametrize("field", ["connect", "read", "wait", "stall", "progress", "deadline"])
@pytest.mark.parametrize("value", [0, -1, -0.5, True, "10", None])
def test_timeouts_validation(field: str, value: Any) -> None:
    if field == "deadline" and value is None:
        assert Timeouts(deadline=None).deadline is None  # no bound of its own: the default
        return
    with pytest.raises(ValueError, match=field):
        Timeouts(**{field: value})
    with pytest.raises(ValueError):
        Timeouts().replace(**{field: value})


# -- LostCarts ----------------------------------------------------------------------------


def test_lost_carts_defaults_and_the_moment_a_spare_is_due() -> None:
    rule = LostCarts()
    assert (rule.after, rule.per_file, rule.spares, rule.jitter) == (20.0, 0.1, 3, 0.1)
    assert rule.spare_after(250) == pytest.approx(45.0), "20 s + 0.1 s per file, the jitter drawn in the middle"
    assert rule.spare_after(250, draw=0.0) == pytest.approx(40.5) and rule.spare_after(250, draw=0.999) < 49.5
    for files in (1, 30, 250):  # up to CartLimits.max_files
        assert 2 * rule.spare_after(files, draw=0.999) < 60 + 0.2 * files, "a cart and its spare lost: in the bound"
    assert LostCarts(spares=0).spares == 0, "0 means never post a spare"
    assert rule.replace(after=5.0).after == 5.0 and rule.after == 20.0


@pytest.mark.parametrize(
    "changes",
    [
        {"after": 0},
        {"after": -1.0},
        {"after": True},
        {"per_file": -0.1},
        {"per_file": "1"},
        {"spares": -1},
        {"spares": 1.5},
        {"spares": True},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_lost_carts_validation(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="LostCarts." + next(iter(changes))):
        LostCarts(**changes)


@pytest.mark.parametrize("field", ["connect", "read", "wait", "stall", "progress"])
def test_timeouts_refuse_nan(field: str) -> None:
    with pytest.raises(ValueError):
        Timeouts(**{field: math.nan})


# -- transport helpers ----------------------------------------------------------------------


def test_request_kwargs_none() -> None:
    assert request_kwargs(None) == {}


def test_request_kwargs_tuple() -> None:
    assert request_kwargs(("user", "secret")) == {"auth": ("user", "secret")}


def test_request_kwargs_auth_object() -> None:
    auth = requests.auth.HTTPBasicAuth("user", "secret")
    assert request_kwargs(auth) == {"auth": auth}
    assert request_kwargs(auth)["auth"] is auth


def test_request_kwargs_callable() -> None:
    def sign(request: Any) -> Any:
        return request

    assert request_kwargs(sign) == {"auth": sign}


def test_request_kwargs_dict() -> None:
    given = {
        "auth": ("user", "secret"),
        "cert": ("/tmp/client.pem", "/tmp/client.key"),
        "verify": "/tmp/ca.pem",
        "headers": {"X-Token": "t"},
    }
    result = request_kwargs(given)
    assert result == given
    result["verify"] = False
    assert given["verify"] == "/tmp/ca.pem"  # a copy, not the caller's dict
    assert request_kwargs({}) == {}
    assert request_kwargs({"proxies": {"http": "http://proxy:3128"}}) == {"proxies": {"http": "http://proxy:3128"}}


def test_request_kwargs_unknown_dict_key_refused() -> None:
    with pytest.raises(InvalidInputError) as info:
        request_kwargs({"auth": ("u", "p"), "timeout": 5, "stream": True})
    assert info.value.problems == ["unknown key 'stream'", "unknown key 'timeout'"]


@pytest.mark.parametrize("auth", [42, "user:secret", ["user", "secret"], 1.5])
def test_request_kwargs_other_types_refused(auth: Any) -> None:
    with pytest.raises(InvalidInputError):
        request_kwargs(auth)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://user:pass@host:8081/cart/1?x=1#f", "http://host:8081/cart/1?x=1#f"),
        ("https://user:pass@host/cart", "https://host/cart"),
        ("http://token@host/cart", "http://host/cart"),
        ("http://:pass@host/cart", "http://host/cart"),
        ("http://host:8081/cart", "http://host:8081/cart"),
        ("http://127.0.0.1:8081/abc", "http://127.0.0.1:8081/abc"),
    ],
)
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected
    assert "pass" not in redact(url) and "token" not in redact(url)


def test_redact_ipv6_keeps_brackets() -> None:
    assert redact("http://user:pass@[::1]:8081/cart") == "http://[::1]:8081/cart"


# -- summarize -------------------------------------------------------------------------------


def _escaped_traceback() -> str:
    lines = ["Traceback (most recent call last):"]
    for index in range(30):
        lines.append(f'  File "/opt/cartd/pacifica/cart/tasks_{index}.py", line {100 + index}, in stage_file')
        lines.append(f'    result = archive.stage(file_id, "path", retries={index})')
    lines.append('requests.exceptions.HTTPError: 404 Client Error: Not Found for url: "http://archive/42"')
    text = "\n".join(lines)
    escaped = json.dumps(text)[1:-1]  # how Cartd puts it into X-Pacifica-Message
    assert "\\n" in escaped and '\\"' in escaped
    return escaped


def test_summarize_traceback() -> None:
    message = _escaped_traceback()
    assert len(message) >= 3000
    summary = summarize(message)
    assert len(summary) < 600
    assert summary.startswith("Traceback (most recent call last):")
    assert summary.endswith('requests.exceptions.HTTPError: 404 Client Error: Not Found for url: "http://archive/42"')
    assert "\\n" not in summary and '\\"' not in summary
    assert "tasks_5.py" not in summary


def test_summarize_short_and_empty() -> None:
    assert summarize("just one line") == "just one line"
    assert summarize("") == "(no message)"
    assert summarize("  \\n \n ") == "(no message)"
    long = summarize("x" * 5000)
    assert len(long) == 240 and long.endswith("...")


# -- the package ------------------------------------------------------------------------------


def test_all_names_exist_and_are_documented() -> None:
    assert len(downloader.__all__) == len(set(downloader.__all__))
    for name in downloader.__all__:
        value = getattr(downloader, name)
        doc = getattr(value, "__doc__", None)
        assert doc and doc.strip(), name
    for name in ("Downloader", "CartAPI", "CloudEvent", "TransactionInfo", "InvalidInputError", "Retry", "Timeouts"):
        assert name in downloader.__all__


def test_public_methods_are_documented() -> None:
    for name in ("Downloader", "CartAPI", "CloudEvent", "TransactionInfo", "Retry", "Timeouts"):
        cls = getattr(downloader, name)
        for attribute in vars(cls):
            if attribute.startswith("_") or not callable(getattr(cls, attribute)):
                continue
            assert getattr(cls, attribute).__doc__, f"{name}.{attribute}"


def test_every_error_derives_from_downloader_error() -> None:
    for name in downloader.__all__:
        value = getattr(downloader, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, downloader.DownloaderError), name


def test_version() -> None:
    assert isinstance(downloader.__version__, str) and downloader.__version__


def test_pacifica_is_a_namespace_package() -> None:
    pacifica = importlib.import_module("pacifica")
    assert getattr(pacifica, "__file__", None) is None
    spec = importlib.util.find_spec("pacifica")
    assert spec is not None and spec.origin in (None, "namespace")
    package_dir = Path(downloader.__file__).resolve().parent
    assert not (package_dir.parent / "__init__.py").exists()


def test_py_typed_shipped() -> None:
    package_dir = Path(downloader.__file__).resolve().parent
    assert (package_dir / "py.typed").is_file()
    pyproject = package_dir.parent.parent / "pyproject.toml"
    if pyproject.is_file() and sys.version_info >= (3, 11):  # a checkout, and tomllib to read its metadata
        import tomllib

        package_data = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
        assert "py.typed" in package_data["pacifica.downloader"]


def test_every_public_name_has_a_docstring_with_an_example() -> None:
    import pacifica.downloader as package

    missing = [name for name in package.__all__ if ">>>" not in (getattr(package, name).__doc__ or "")]
    assert missing == []
