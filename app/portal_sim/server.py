"""The portal simulator's HTTP server (aiohttp): both sites of PORTAL.md, with injectable faults.

It runs on its own event loop, in a background thread for tests (`PortalSimulator.start`) or in
the foreground for `python -m app portal-sim` (`serve_forever`). Latency is `asyncio.sleep`, so
one simulator serves many concurrent clients the way the real portal does, which the download
benchmark depends on.
"""

import asyncio
import collections
import contextlib
import datetime as dt
import html
import random
import secrets
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from app.config import FILE_SPECS
from app.json_logger import log_event
from app.portal_sim import data
from app.portal_sim.config import (
    BODY_BEHAVIOURS,
    PLAINTEXT_BODY,
    Behaviour,
    SimConfig,
    ist_today,
    parse_behaviours,
)

WEB_COOKIE = "tms_web"
REPORTS_COOKIE = "tms_session"
REPORTS_CARD = "Daily Operations Tracker"
LOGGED_OUT_TEXT = "You need to be logged in to view this page!"

_LOGIN_PAGE = """<!DOCTYPE html>
<html><head><title>TMS | Login</title></head>
<body><div class="login-box"><h3>Sign in</h3>{error}
<form method="post" action="/home/login">
<input type="text" name="user_name" placeholder="User name">
<input type="password" name="password" placeholder="Password">
<button type="submit">Login</button>
</form></div></body></html>"""

_CARD = """<div class="col-md-4"><div class="card"><div class="card-body">
<h5 class="card-title">{title}</h5><p class="card-text">{text}</p>
<a class="btn btn-primary" href="{href}">Open</a></div></div></div>"""

_HOME_PAGE = """<!DOCTYPE html>
<html><head><title>TMS | Home</title></head>
<body><nav><a href="/home">Home</a> <a href="/home/logout">Logout</a></nav>
<h2>Welcome, {user}</h2><div class="row">{cards}</div></body></html>"""

_TICKET_PAGE = """<!DOCTYPE html>
<html><head><title>Ticket Managment</title></head>
<body><div class="container">{body}</div></body></html>"""


def _ticket_page(body: str) -> web.Response:
    return web.Response(text=_TICKET_PAGE.format(body=body), content_type="text/html")


def _logged_out() -> web.Response:
    """What the reports site answers without a valid session: HTTP 200, an HTML page."""
    return _ticket_page(f"<h4>{LOGGED_OUT_TEXT}</h4><a href='/home/login'>Login</a>")


def _report_route_table() -> dict[tuple[str, tuple[tuple[str, str], ...]], str]:
    """(path, sorted query without store_code) → report key, derived from FILE_SPECS."""
    table = {}
    for key, spec in FILE_SPECS.items():
        parts = urllib.parse.urlsplit(spec["url_template"])
        query = tuple(
            sorted(
                (k, v)
                for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
                if k != "store_code"
            )
        )
        table[(parts.path, query)] = key
    return table


_ROUTES = _report_route_table()
_DOWNLOAD_NAMES = {
    "missed_leads": "pickup_{sc}.csv",
    "undelivered_all": "undelieverd_order_{sc}.csv",
    "undelivered_last10": "undelieverd_order_last10_{sc}.csv",
    "undelivered_u": "undelieverd_order_u_{sc}.csv",
    "repeat_customers": "repeat{sc}.csv",
    "nonpackage_all": "nonpackage_all_{sc}.csv",
    "nonpackage_u": "nonpackage_u_{sc}.csv",
}


@dataclass
class _ReportsSession:
    login_no: int
    requests: int = 0
    selected: set[str] = field(default_factory=set)


class PortalSimulator:
    """A running simulated portal. See `SimConfig` for what it can be told to do.

    Everything served is a pure function of the config and the date, so `served_rows` and
    `served_bytes` can answer from the test's thread without sharing state with the server.
    Counters (`login_count`, `requests`, ...) are updated on the server thread under a lock.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        cfg = self.config
        codes = cfg.store_codes or data.default_store_codes(cfg.store_count, cfg.seed)
        self.store_codes: list[str] = list(codes)
        self._known = set(self.store_codes)
        self.username = cfg.username
        self.password = cfg.password
        self._today = cfg.today or ist_today()
        self._behaviours: dict[str, list[Behaviour]] = {
            sc: parse_behaviours(spec) for sc, spec in cfg.store_behaviour.items()
        }
        self._fired: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._rng = random.Random(f"faults|{cfg.seed}")
        self._lock = threading.Lock()
        self._web_sessions: dict[str, str] = {}
        self._tickets: dict[str, str] = {}
        self._reports_sessions: dict[str, _ReportsSession] = {}
        self.login_count = 0
        self.failed_login_count = 0
        self.requests: collections.Counter[str] = collections.Counter()
        self.request_log: list[str] = []  # path?query of every request, in arrival order
        self.faults: collections.Counter[str] = collections.Counter()
        self.served: collections.Counter[tuple[str, str]] = collections.Counter()
        self.web_url = ""
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []

    # ----- data, for tests -------------------------------------------------------------------

    @property
    def today(self) -> dt.date:
        return self._today

    def set_today(self, day: dt.date) -> None:
        self._today = day

    def stores(self) -> list[dict[str, str]]:
        return [
            {"store_code": sc, "store_name": data.store_profile(self.config.seed, sc).name}
            for sc in self.store_codes
        ]

    def _data_mode(self, store_code: str, key: str) -> str | None:
        if store_code not in self._known:
            return "sentinel"
        for b in self._behaviours.get(store_code, []):
            if b.name in ("sentinel", "empty") and b.target in (None, key):
                return b.name
        return None

    def other_store(self, store_code: str) -> str:
        """Whose report an `otherstore` token serves: the next simulator store (cyclically), or
        the synthetic `Z999` (`Z998` if that is the store) when there is no other one."""
        others = [sc for sc in self.store_codes if sc != store_code]
        if not others:
            return "Z998" if store_code == "Z999" else "Z999"
        if store_code not in self._known:
            return others[0]
        return self.store_codes[(self.store_codes.index(store_code) + 1) % len(self.store_codes)]

    def body_faults(
        self, report_key: str, store_code: str, *, all_faults: bool = False
    ) -> frozenset[str]:
        """The body tokens that apply to that report: the always (`*`) ones, or every one."""
        return frozenset(
            b.name
            for b in self._behaviours.get(store_code, [])
            if b.name in BODY_BEHAVIOURS
            and b.target in (None, report_key)
            and (all_faults or b.times is None)
        )

    def _take_body_faults(self, store_code: str, report_key: str) -> frozenset[str]:
        """The body tokens this request gets, counting the limited ones per (store, report)."""
        names: set[str] = set()
        with self._lock:
            for b in self._behaviours.get(store_code, []):
                if b.name not in BODY_BEHAVIOURS or b.target not in (None, report_key):
                    continue
                slot = (store_code, report_key, b.name)
                if b.times is None or self._fired[slot] < b.times:
                    self._fired[slot] += 1
                    self.faults[b.name] += 1
                    names.add(b.name)
        return frozenset(names)

    def _body(
        self, report_key: str, store_code: str, day: dt.date, faults: frozenset[str]
    ) -> data.DamagedBody:
        mode = self._data_mode(store_code, report_key)
        if not faults:
            return data.DamagedBody(
                data.report_bytes(self.config, report_key, store_code, day, mode)
            )
        other = self.other_store(store_code)
        return data.damaged_body(self.config, report_key, store_code, day, mode, faults, other)

    def served_body(
        self,
        report_key: str,
        store_code: str,
        day: dt.date | None = None,
        *,
        all_faults: bool = False,
    ) -> "data.DamagedBody":
        """The body this portal sends for that report, store and date, with what it damages.

        With the store's always (`*`) body tokens applied; `all_faults=True` applies the
        counted ones too (the body of the first N requests). HTTP faults are not reflected.
        """
        faults = self.body_faults(report_key, store_code, all_faults=all_faults)
        return self._body(report_key, store_code, day or self._today, faults)

    def served_bytes(
        self,
        report_key: str,
        store_code: str,
        day: dt.date | None = None,
        *,
        all_faults: bool = False,
    ) -> bytes:
        """The exact body this portal sends (see `served_body`)."""
        return self.served_body(report_key, store_code, day, all_faults=all_faults).body

    def fault_lines(
        self,
        report_key: str,
        store_code: str,
        day: dt.date | None = None,
        *,
        all_faults: bool = False,
    ) -> list[int]:
        """Physical lines (1 = header) of `served_bytes` where a damaged record begins."""
        return list(
            self.served_body(report_key, store_code, day, all_faults=all_faults).fault_lines
        )

    def damaged_records(
        self,
        report_key: str,
        store_code: str,
        day: dt.date | None = None,
        *,
        all_faults: bool = False,
    ) -> list[int]:
        """0-based indices into `served_rows` of the records `served_bytes` damages."""
        return list(
            self.served_body(report_key, store_code, day, all_faults=all_faults).damaged_records
        )

    def served_rows(
        self, report_key: str, store_code: str, day: dt.date | None = None
    ) -> list[dict[str, str]]:
        """The clean records (header -> raw value) of that store's report; empty for the
        sentinel. Body tokens never change them (see SimConfig)."""
        day = day or self._today
        mode = self._data_mode(store_code, report_key)
        return data.report_records(self.config, report_key, store_code, day, mode)

    def served_header(
        self, report_key: str, store_code: str, day: dt.date | None = None
    ) -> list[str]:
        mode = self._data_mode(store_code, report_key)
        return data.report_table(self.config, report_key, store_code, day or self._today, mode)[0]

    # ----- lifecycle -------------------------------------------------------------------------

    def build_apps(self) -> tuple[web.Application, web.Application | None]:
        """(main site, reports site); one app with every route when origins are not split."""
        web_app = web.Application()
        self._add_web_routes(web_app)
        if not self.config.split_origins:
            self._add_reports_routes(web_app)
            return web_app, None
        reports_app = web.Application()
        self._add_reports_routes(reports_app)
        return web_app, reports_app

    async def _start_async(self, host: str, port: int, reports_port: int) -> None:
        web_app, reports_app = self.build_apps()
        runner = web.AppRunner(web_app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        self._runners.append(runner)
        bound = runner.addresses[0][1]
        self.web_url = f"http://{_url_host(host)}:{bound}"
        self.base_url = self.web_url
        if reports_app is not None:
            runner2 = web.AppRunner(reports_app, access_log=None, handler_cancellation=True)
            await runner2.setup()
            site2 = web.TCPSite(runner2, host, reports_port, backlog=1024)
            await site2.start()
            self._runners.append(runner2)
            bound2 = runner2.addresses[0][1]
            # Another host name for the same loopback address: a separate cookie domain.
            other = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host  # noqa: S104
            self.base_url = f"http://{other}:{bound2}"

    async def _stop_async(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    def start(self, host: str = "127.0.0.1", port: int = 0, reports_port: int = 0) -> None:
        """Serve from a background thread; returns once both sites are listening."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_async(host, port, reports_port))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop_async())
            loop.close()

        self._thread = threading.Thread(target=run, name="portal-sim", daemon=True)
        self._thread.start()
        ready.wait(timeout=30)
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> "PortalSimulator":
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----- bookkeeping -----------------------------------------------------------------------

    def _count(self, request: web.Request) -> None:
        with self._lock:
            self.requests[request.path] += 1
            self.request_log.append(request.path_qs)

    def dashboard_visits(self, store_code: str) -> int:
        needle = f"/mis/partner_dashboard?store_code={store_code}"
        with self._lock:
            return sum(1 for p in self.request_log if p == needle)

    def requests_for(self, store_code: str) -> list[str]:
        with self._lock:
            return [p for p in self.request_log if f"store_code={store_code}" in p]

    # ----- main site -------------------------------------------------------------------------

    def _add_web_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._root)
        app.router.add_get("/home", self._home)
        app.router.add_get("/home/login", self._login_form)
        app.router.add_post("/home/login", self._login)
        app.router.add_get("/home/logout", self._logout)

    async def _root(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        raise web.HTTPFound("/home")

    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        return web.Response(text=_LOGIN_PAGE.format(error=""), content_type="text/html")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        form = await request.post()
        user, password = str(form.get("user_name", "")), str(form.get("password", ""))
        if user != self.username or password != self.password:
            with self._lock:
                self.failed_login_count += 1
            error = '<div class="alert alert-danger">Invalid username/password</div>'
            return web.Response(text=_LOGIN_PAGE.format(error=error), content_type="text/html")
        sid = secrets.token_urlsafe(16)
        with self._lock:
            self.login_count += 1
            self._web_sessions[sid] = user
        resp = web.HTTPFound("/home")
        resp.set_cookie(WEB_COOKIE, sid, httponly=True, path="/")
        raise resp

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        self._web_sessions.pop(request.cookies.get(WEB_COOKIE, ""), None)
        raise web.HTTPFound("/home/login")

    async def _home(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        sid = request.cookies.get(WEB_COOKIE, "")
        user = self._web_sessions.get(sid)
        if user is None:
            raise web.HTTPFound("/home/login")
        ticket = secrets.token_urlsafe(16)
        self._tickets[ticket] = sid
        cards = [
            _CARD.format(title="Store Inventory", text="Stock and consumables", href="/inventory"),
        ]
        if not self.config.hide_reports_card:
            href = f"{self.base_url}/client/sso?ticket={ticket}"
            cards.append(_CARD.format(title=REPORTS_CARD, text="MIS reports per store", href=href))
        cards.append(_CARD.format(title="HR Portal", text="Attendance", href="/hr"))
        page = _HOME_PAGE.format(user=html.escape(user), cards="".join(cards))
        return web.Response(text=page, content_type="text/html")

    # ----- reports site ----------------------------------------------------------------------

    def _add_reports_routes(self, app: web.Application) -> None:
        app.router.add_get("/client/sso", self._sso)
        app.router.add_get("/client/tickets", self._tickets_page)
        app.router.add_get("/mis/partner_dashboard", self._dashboard)
        for path in sorted({p for p, _ in _ROUTES}):
            app.router.add_get(path, self._download)

    async def _sso(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        web_sid = self._tickets.pop(request.query.get("ticket", ""), None)
        if web_sid is None or web_sid not in self._web_sessions:
            return _logged_out()
        sid = secrets.token_urlsafe(16)
        with self._lock:
            if self.config.single_session:
                self._reports_sessions.clear()
            self._reports_sessions[sid] = _ReportsSession(login_no=self.login_count)
        resp = web.HTTPFound("/client/tickets")
        resp.set_cookie(REPORTS_COOKIE, sid, httponly=True, path="/")
        raise resp

    def _session(self, request: web.Request) -> _ReportsSession | None:
        """The caller's live session, counting this request against its lifetime."""
        sid = request.cookies.get(REPORTS_COOKIE, "")
        with self._lock:
            session = self._reports_sessions.get(sid)
            if session is None:
                return None
            session.requests += 1
            limit = self.config.session_expires_after
            if limit is not None and session.requests > limit:
                del self._reports_sessions[sid]
                self.faults["expired"] += 1
                return None
            return session

    async def _tickets_page(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        if self._session(request) is None:
            return _logged_out()
        return _ticket_page("<h4>Open tickets</h4><table class='table'></table>")

    async def _dashboard(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        sc = request.query.get("store_code", "")
        session = self._session(request)
        if session is None:
            return _logged_out()
        if self.config.dashboard_latency_s:
            await asyncio.sleep(self.config.dashboard_latency_s)
        fault = await self._fault(request, sc, "dashboard")
        if fault is not None:
            return fault
        session.selected.add(sc)
        if sc not in self._known:
            body = f"<h4>No store found for {html.escape(sc)}</h4>"
        else:
            name = data.store_profile(self.config.seed, sc).name
            body = (
                f"<h3>Partner Dashboard: {html.escape(sc)} ({html.escape(name)})</h3>"
                "<div class='widgets'>Pickups, orders, repeat customers</div>"
            )
        return _ticket_page(body)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        query = tuple(sorted((k, v) for k, v in request.query.items() if k != "store_code"))
        key = _ROUTES.get((request.path, query))
        if key is None:
            raise web.HTTPNotFound()
        sc = request.query.get("store_code", "")
        session = self._session(request)
        if session is None:
            return _logged_out()
        if sc not in session.selected:
            # The portal exports whatever store the session has selected; without one it shows a
            # page, not a CSV.
            return _ticket_page("<h4>Please select a store from the partner dashboard.</h4>")
        if self.config.csv_latency_s:
            await asyncio.sleep(self.config.csv_latency_s)
        fault = await self._fault(request, sc, key)
        if fault is not None:
            return fault
        body = self._body(key, sc, self._today, self._take_body_faults(sc, key)).body
        with self._lock:
            self.served[(key, sc)] += 1
        filename = _DOWNLOAD_NAMES[key].format(sc=sc)
        return web.Response(
            body=body,
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    # ----- faults ----------------------------------------------------------------------------

    def _pick_fault(self, sc: str, target: str) -> str | None:
        with self._lock:
            for b in self._behaviours.get(sc, []):
                if b.name in ("sentinel", "empty") or b.name in BODY_BEHAVIOURS:
                    continue
                if b.target is None and target == "dashboard":
                    continue
                if b.target not in (None, target):
                    continue
                slot = (sc, target, b.name)
                if b.times is None or self._fired[slot] < b.times:
                    self._fired[slot] += 1
                    return b.name
            if target == "dashboard":
                return None
            cfg = self.config
            for name, rate in (
                ("429", cfg.rate_429),
                ("500", cfg.rate_5xx),
                ("reset", cfg.rate_reset),
                ("truncate", cfg.rate_truncate),
                ("html", cfg.rate_html),
            ):
                if rate and self._rng.random() < rate:
                    return name
        return None

    async def _fault(self, request: web.Request, sc: str, target: str) -> web.StreamResponse | None:
        name = self._pick_fault(sc, target)
        if name is None:
            return None
        with self._lock:
            self.faults[name] += 1
        if name == "slow":
            await asyncio.sleep(self.config.slow_latency_s)
            return None
        if name == "429":
            return web.Response(
                status=429,
                text="Too Many Requests",
                headers={"Retry-After": str(self.config.retry_after_s)},
            )
        if name in ("500", "502", "503"):
            return web.Response(status=int(name), text="Server Error")
        if name == "html":
            return _logged_out()
        if name == "plaintext":
            return web.Response(text=PLAINTEXT_BODY, content_type="text/plain")
        transport = request.transport
        if name == "reset":
            if transport is not None:
                transport.abort()
            raise asyncio.CancelledError
        # truncate: announce the full length, send half, drop the connection.
        body = self.served_bytes(target, sc) if target != "dashboard" else b"<html>" * 64
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/csv", "Content-Length": str(len(body))}
        )
        await resp.prepare(request)
        await resp.write(body[: max(1, len(body) // 2)])
        await asyncio.sleep(0)
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):  # noqa: S104 - the URL to print, not the bind address
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def serve_forever(*, host: str, port: int, stores: int, seed: int) -> None:
    """`python -m app portal-sim`: one origin on `port`, logs what to point the platform at."""
    cfg = SimConfig(store_count=stores, seed=seed, split_origins=False)
    sim = PortalSimulator(cfg)
    sim.start(host=host, port=port)
    log_event(
        "portal-sim",
        f"portal simulator listening on {sim.web_url} (Ctrl-C to stop)",
        extras={
            "TMS_WEB": sim.web_url,
            "TMS_BASE": sim.base_url,
            "TMS_USERNAME": sim.username,
            "stores": sim.stores(),
            "today": sim.today.isoformat(),
            "seed": seed,
        },
    )
    # The demo account is public, but a log sink is no place for a password: tell the person.
    print(
        f"export TMS_WEB={sim.web_url} TMS_BASE={sim.base_url} "
        f"TMS_USERNAME={sim.username} TMS_PASSWORD={sim.password}\n"
        f"stores: {','.join(sim.store_codes)}",
        file=sys.stderr,
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        log_event("portal-sim", "portal simulator stopped")


def run_in_process(conn: Any, config: SimConfig) -> None:
    """Child-process entry for the benchmark: serve, send back the URLs, wait for any message."""
    sim = PortalSimulator(config)
    sim.start()
    conn.send({"web_url": sim.web_url, "base_url": sim.base_url, "stores": sim.store_codes})
    with contextlib.suppress(EOFError):
        conn.recv()
    conn.send({"login_count": sim.login_count, "requests": dict(sim.requests)})
    sim.stop()
