"""The portal session: login, the sign-on hop, store selection and one CSV download.

One `httpx.AsyncClient` (one cookie jar) per login session, all sharing one connection pool.
Workers share the current session; when a page says the session is gone, exactly one of them
logs in again and the others notice the new generation and re-select their store (PORTAL.md,
Session 4: a new login replaces the session for everyone sharing the cookies).

Passwords and cookies are never put into an exception message or a log line: messages carry the
user name, URLs (which hold only store codes) and statuses.
"""

import asyncio
import email.utils
import os
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from app.config import validate_store_code
from app.csv_io import count_records, is_sentinel_bytes, looks_like_html
from app.downloader.pages import REPORTS_CARD_TITLE, find_card_link, is_login_required, page_title
from app.rejects import FileProblem

T = TypeVar("T")
# Judges a complete body (the part file) before it gets its final name; None = a good file.
FileCheck = Callable[[Path], FileProblem | None]
_SNIFF_BYTES = 4096
_QUOTE_CHARS = 200  # how much of a portal message goes into a failure reason
USER_AGENT = "crm-platform-downloader/1.0"


@dataclass(frozen=True)
class PortalCredentials:
    """Where the portal is and who logs in; the password never appears in a repr or log."""

    web_url: str
    base_url: str
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "web_url", self.web_url.rstrip("/"))
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    @classmethod
    def from_settings(cls, settings: Any) -> "PortalCredentials":
        """From `app.settings.Settings`; the caller checks `missing_portal_settings()` first."""
        return cls(
            web_url=settings.tms_web,
            base_url=settings.tms_base,
            username=settings.tms_username,
            password=settings.tms_password.get_secret_value(),
        )


class PortalError(Exception):
    """The portal as a whole is unusable for this run."""


class LoginError(PortalError):
    """Wrong credentials, a login page after logging in, or no reports card: exit code 2."""


class PortalUnavailableError(PortalError):
    """The login could not reach the portal (network, 5xx) even after retries."""


class RetryableStatus(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class EmptyBody(Exception):
    """HTTP 200 with zero bytes: the portal never sends that (an empty report is the sentinel)."""


class PlainTextBody(Exception):
    """HTTP 200 with a short `text/plain` sentence (an error message) in place of a CSV."""

    def __init__(self, first_line: str) -> None:
        super().__init__(first_line)
        self.first_line = first_line


class BadFile(Exception):
    """The caller's file check rejected a complete body; it was not saved."""

    def __init__(self, problem: FileProblem) -> None:
        super().__init__(problem.reason)
        self.problem = problem


class FetchError(Exception):
    """A file that could not be downloaded; the message is the reason shown to the operator."""


class SessionLost(Exception):
    """The portal answered with a login/HTML page where content was expected."""

    def __init__(self, message: str, generation: int) -> None:
        super().__init__(message)
        self.generation = generation


@dataclass
class _Session:
    client: httpx.AsyncClient
    generation: int


@dataclass
class FetchResult:
    path: Path
    bytes: int
    rows: int
    retries: int
    empty_report: bool


class _SharedTransport(httpx.AsyncBaseTransport):
    """Lets every session's client use one pool without closing it when a session is dropped."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        return None


class RateLimiter:
    """Spaces request starts `1/rate` seconds apart (the portal answers 429 when pushed)."""

    def __init__(self, rate_per_s: float) -> None:
        self.interval = 1.0 / rate_per_s if rate_per_s and rate_per_s > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _is_tls_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def describe(exc: BaseException) -> str:
    """A one-line reason for the operator (no URLs with secrets exist, so URLs may appear)."""
    if isinstance(exc, RetryableStatus):
        return f"HTTP {exc.status}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.TransportError) and _is_tls_error(exc):
        return f"TLS error (certificate verification stays on): {exc}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"connection dropped or body incomplete: {exc}"
    if isinstance(exc, httpx.TransportError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, EmptyBody):
        return "HTTP 200 with an empty body"
    if isinstance(exc, PlainTextBody):
        return f"the portal sent a plain-text message instead of a CSV: {exc.first_line!r}"
    return f"{type(exc).__name__}: {exc}"


def _check_plain_text(resp: httpx.Response, head: bytes) -> None:
    """A short `text/plain` body that is not the empty-report sentinel is an error message.

    The portal sends its CSVs as `text/csv`; a one-sentence plain-text answer with HTTP 200
    ("Service temporarily unavailable, ...") is transient, and saving it would make the store
    look like it had an (oddly shaped) report. Only bodies shorter than the sniff window count.
    """
    media = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media != "text/plain" or is_sentinel_bytes(head):
        return
    text = head.decode("utf-8", "replace").lstrip("\ufeff")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) > _QUOTE_CHARS:
        first = first[: _QUOTE_CHARS - 3] + "..."
    raise PlainTextBody(first)


class _PartFile:
    """A temporary file next to the final name; only `commit` makes it visible under that name."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.part")
        self._fh: IO[bytes] | None = self.tmp.open("wb")
        self.size = 0

    def write(self, chunk: bytes) -> None:
        assert self._fh is not None
        self._fh.write(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def commit(self) -> None:
        self.close()
        self.tmp.replace(self.final)

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.tmp.unlink(missing_ok=True)


class PortalClient:
    """Session management plus retrying requests against both portal sites."""

    def __init__(
        self,
        creds: PortalCredentials,
        *,
        timeout_s: float = 60.0,
        rate_per_s: float = 20.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_retry_after_s: float = 120.0,
        pool_size: int = 10,
    ) -> None:
        self.creds = creds
        self.max_retries = max_retries
        self.max_retry_after_s = max_retry_after_s
        self._timeout = httpx.Timeout(timeout_s)
        self._rate = RateLimiter(rate_per_s)
        self._expo = wait_exponential_jitter(
            multiplier=backoff_base_s, max=backoff_max_s, jitter=backoff_base_s
        )
        limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
        self._pool = httpx.AsyncHTTPTransport(limits=limits, retries=0)
        self._transport = _SharedTransport(self._pool)
        self._clients: list[httpx.AsyncClient] = []
        self._session: _Session | None = None
        self._login_lock = asyncio.Lock()
        self._login_failure: LoginError | None = None
        self.login_count = 0
        self.login_retries = 0

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
        await self._pool.aclose()

    @property
    def generation(self) -> int:
        return self._session.generation if self._session else 0

    def _new_client(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=self._transport,
            timeout=self._timeout,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )
        self._clients.append(client)
        return client

    # ----- retries ---------------------------------------------------------------------------

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, (RetryableStatus, EmptyBody, PlainTextBody)):
            return True
        return isinstance(exc, httpx.TransportError) and not _is_tls_error(exc)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableStatus) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after_s)
        return float(self._expo(state))

    async def _retrying(self, fn: Callable[[], Awaitable[T]], counter: list[int]) -> T:
        """Run `fn` with backoff on 429/5xx/resets/timeouts; `counter[0]` counts the retries."""

        def before_sleep(_state: RetryCallState) -> None:
            counter[0] += 1

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(self._retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await fn()
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _get_page(
        self, client: httpx.AsyncClient, method: str, url: str, counter: list[int], **kw: Any
    ) -> httpx.Response:
        async def once() -> httpx.Response:
            await self._rate.wait()
            resp = await client.request(method, url, **kw)
            if resp.status_code == 429 or resp.status_code >= 500:
                raise RetryableStatus(
                    resp.status_code, parse_retry_after(resp.headers.get("Retry-After"))
                )
            return resp

        return await self._retrying(once, counter)

    # ----- session ---------------------------------------------------------------------------

    async def login(self) -> None:
        """Log in on the main site and take the sign-on hop; raises LoginError on any refusal."""
        if self._login_failure is not None:
            raise self._login_failure
        creds = self.creds
        login_url = f"{creds.web_url}/home/login"
        who = f"portal login failed for user {creds.username!r} at {login_url}"
        client = self._new_client()
        counter = [0]
        try:
            resp = await self._get_page(
                client,
                "POST",
                login_url,
                counter,
                data={"user_name": creds.username, "password": creds.password},
            )
            if resp.status_code not in (301, 302, 303, 307, 308):
                if "invalid username/password" in resp.text.lower():
                    raise LoginError(f"{who}: Invalid username/password")
                raise LoginError(f"{who}: HTTP {resp.status_code} and no redirect to /home")
            home_url = urllib.parse.urljoin(login_url, resp.headers.get("Location", "/home"))
            home = await self._get_page(client, "GET", home_url, counter)
            if home.status_code in (301, 302, 303, 307, 308) or is_login_required(home.text):
                raise LoginError(f"{who}: the home page sent us back to the login page")
            if home.status_code != 200:
                raise LoginError(f"{who}: home page answered HTTP {home.status_code}")
            link = find_card_link(home.text, REPORTS_CARD_TITLE)
            if not link:
                raise LoginError(f"{who}: no {REPORTS_CARD_TITLE!r} card on the home page")
            sso_url = urllib.parse.urljoin(str(home.url), link)
            landing = await self._get_page(client, "GET", sso_url, counter, follow_redirects=True)
            if landing.status_code != 200 or is_login_required(landing.text):
                raise LoginError(
                    f"{who}: the sign-on hop to the reports site was refused "
                    f"(HTTP {landing.status_code} at {landing.url.copy_with(query=None)})"
                )
        except LoginError as exc:
            self._login_failure = exc
            raise
        except (httpx.TransportError, RetryableStatus, EmptyBody) as exc:
            raise PortalUnavailableError(f"{who}: {describe(exc)} after retries") from None
        finally:
            self.login_retries += counter[0]
        self.login_count += 1
        self._session = _Session(client=client, generation=self.generation + 1)

    async def relogin(self, seen_generation: int) -> bool:
        """Log in again unless another worker already replaced that session; True if we did."""
        async with self._login_lock:
            if self.generation != seen_generation:
                return False
            await self.login()
            return True

    async def select_store(self, store_code: str, counter: list[int]) -> int:
        """Visit the store's dashboard (selects it in the session); returns the generation."""
        try:
            validate_store_code(store_code)  # it goes into a URL: never trust the caller
        except ValueError as exc:
            raise FetchError(str(exc)) from None
        session = self._require_session()
        url = f"{self.creds.base_url}/mis/partner_dashboard?store_code={store_code}"
        try:
            resp = await self._get_page(session.client, "GET", url, counter)
        except (httpx.TransportError, RetryableStatus, EmptyBody) as exc:
            raise FetchError(f"dashboard: {describe(exc)} after {counter[0]} retries") from None
        self._check_redirect(resp, session.generation)
        if resp.status_code != 200:
            raise FetchError(f"dashboard: HTTP {resp.status_code}")
        if is_login_required(resp.text):
            raise SessionLost(
                "the reports site asked for a login on the store dashboard", session.generation
            )
        return session.generation

    def _require_session(self) -> _Session:
        if self._session is None:
            raise RuntimeError("login() first")
        return self._session

    # ----- downloads -------------------------------------------------------------------------

    async def fetch_csv(self, url: str, final: Path, check: FileCheck | None = None) -> FetchResult:
        """Stream one CSV to a temporary file, check it, then rename it to `final`.

        Raises SessionLost for an HTML body (decided from the content, never the status),
        BadFile when `check` finds a problem in the complete body (the part file is gone; the
        caller decides how to retry), and FetchError when retries are exhausted or the answer
        is not retryable.
        """
        session = self._require_session()
        counter = [0]

        async def once() -> FetchResult:
            await self._rate.wait()
            part = _PartFile(final)
            try:
                async with session.client.stream("GET", url) as resp:
                    if resp.status_code == 429 or resp.status_code >= 500:
                        raise RetryableStatus(
                            resp.status_code, parse_retry_after(resp.headers.get("Retry-After"))
                        )
                    self._check_redirect(resp, session.generation)
                    if resp.status_code != 200:
                        raise FetchError(f"HTTP {resp.status_code}")
                    head = await self._stream_body(resp, part, session.generation)
                await asyncio.to_thread(part.close)
                await self._run_check(check, part.tmp)
                empty = part.size <= 64 and is_sentinel_bytes(head)
                rows = 0 if empty else await asyncio.to_thread(count_records, part.tmp)
                size = part.size
                await asyncio.to_thread(part.commit)
                return FetchResult(final, size, rows, counter[0], empty)
            finally:
                part.discard()

        try:
            return await self._retrying(once, counter)
        except (httpx.TransportError, RetryableStatus, EmptyBody, PlainTextBody) as exc:
            raise FetchError(f"{describe(exc)} after {counter[0]} retries") from None

    async def _stream_body(self, resp: httpx.Response, part: _PartFile, generation: int) -> bytes:
        """Write the body to `part`, judging its first `_SNIFF_BYTES` first; returns that head."""
        head = bytearray()
        sniffed = False
        async for chunk in resp.aiter_bytes():
            if sniffed:
                part.write(chunk)
                continue
            head += chunk
            if len(head) < _SNIFF_BYTES:
                continue
            self._check_head(bytes(head), generation)
            sniffed = True
            part.write(bytes(head))
        if not sniffed:
            if not head:
                raise EmptyBody()
            self._check_head(bytes(head), generation)
            _check_plain_text(resp, bytes(head))
            part.write(bytes(head))
        return bytes(head)

    @staticmethod
    async def _run_check(check: FileCheck | None, path: Path) -> None:
        """The caller's file check, in a thread (it reads the file); a crash in it is reported
        as this file's failure rather than as the whole store's."""
        if check is None:
            return
        try:
            problem = await asyncio.to_thread(check, path)
        except Exception as exc:
            raise FetchError(f"the file check failed: {type(exc).__name__}: {exc}") from None
        if problem is not None:
            raise BadFile(problem)

    @staticmethod
    def _check_redirect(resp: httpx.Response, generation: int) -> None:
        """PORTAL.md says a lost session answers 200 + HTML; a redirect to a login is the same."""
        if resp.is_redirect and "login" in resp.headers.get("Location", "").lower():
            raise SessionLost("the reports site redirected to its login page", generation)

    @staticmethod
    def _check_head(head: bytes, generation: int) -> None:
        if looks_like_html(head):
            title = page_title(head)
            what = "a login page" if is_login_required(head) else "an HTML page"
            raise SessionLost(
                f"the portal sent {what} instead of a CSV"
                + (f" (title {title!r})" if title else ""),
                generation,
            )
