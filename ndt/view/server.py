"""The view's HTTP server: the page, its JSON API and the results folder's files, read-only.

Standard library only (`http.server.ThreadingHTTPServer`): the page polls a handful of small JSON
endpoints, which a threaded server answers in milliseconds, so a web framework would add a dependency
and nothing else.

Routes (GET and HEAD only; anything else is 405):

=================================  =================================================================
``/``                              the page (``static/index.html``)
``/static/<name>``                 the page's script and style, and Plotly's offline bundle
``/api/index``                     the sweeps, their counts, the detector, the metrics
``/api/sweep?sweep=&metric=&v=``   the sweep grid (`SweepView.grid`); ``{"unchanged": true}`` when the
                                   grid's version is still ``v``
``/api/run?sweep=&run=&metric=&v=`` one run (`SweepView.run_view`), same ``v`` rule
``/api/compare?sweep=&runs=a,b&metric=&layer=&band=``  several runs' series (`SweepView.compare`)
``/api/stats``                     the reading counters (parts read, full re-reads, listings)
``/files/<path>``                  a file of the results folder (investigation reports, figures)
=================================  =================================================================

Safety: every request whose path (raw or percent-decoded) has a ``..`` segment, a backslash, a NUL, or,
under ``/files/``, an absolute path, is refused with 403 before anything is opened; a ``/files/`` path
is resolved (symlinks included) and served only when it lies inside the results folder. Sweep and run
names in API queries are looked up among the sweeps found, never joined to a path.
"""

from __future__ import annotations

import json
import mimetypes
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ndt.aggregate.summaries import DEFAULT_METRIC
from ndt.view.data import Results

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Files served under /static/ (nothing else is): the page's own, then Plotly's bundle.
STATIC_FILES = ("view.js", "view.css")
PLOTLY_JS = "plotly.min.js"
#: Seconds between the page's polls while runs train (``--refresh``).
DEFAULT_REFRESH_S = 3.0


def plotly_bundle() -> Path:
    """Path of Plotly's offline bundle (``plotly/package_data/plotly.min.js``, MIT licence).

    Raises:
        RuntimeError: plotly is not installed (the message gives the install command).
    """
    try:
        path = Path(str(resources.files("plotly") / "package_data" / PLOTLY_JS))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise RuntimeError(
            "ndt.view draws its charts with Plotly's offline bundle, and plotly is not installed: "
            "pip install 'ndt[view]' (or pip install plotly)"
        )
    return path


class RefusedPath(ValueError):
    """A request path that could leave the served folder (``..``, absolute, backslash, NUL)."""


def check_request_path(raw: str) -> str:
    """The percent-decoded path of a request target, after refusing anything that could escape.

    Args:
        raw: the request target as received (``/files/a/b.html?x=1``).

    Returns:
        The decoded path (``/files/a/b.html``).

    Raises:
        RefusedPath: not starting with ``/``, a ``..`` segment (raw or decoded), a backslash or a NUL.
    """
    path = urlsplit(raw).path if raw.startswith("/") else ""
    if not path:
        raise RefusedPath(f"request target {raw!r} is not a path starting with /")
    decoded = unquote(path)
    for text in (path, decoded):
        if "\\" in text or "\x00" in text:
            raise RefusedPath("backslashes and NUL characters are refused in paths")
        if ".." in text.split("/"):
            raise RefusedPath("paths with '..' are refused")
    return decoded


def resolve_file(root: Path, relative: str) -> Path:
    """The file `relative` names inside `root`, or an error.

    Args:
        root: the served folder, resolved.
        relative: the decoded path after ``/files/``.

    Raises:
        RefusedPath: an absolute path, a ``..`` segment, or a path that resolves outside `root`
            (through a symlink).
        FileNotFoundError: no such file.
    """
    pure = PurePosixPath(relative)
    if (
        pure.is_absolute()
        or relative.startswith("/")
        or ".." in pure.parts
        or ":" in (pure.parts or ("",))[0]
    ):
        raise RefusedPath("absolute paths and '..' are refused: give a path inside the results folder")
    target = (root / pure).resolve()
    if not target.is_relative_to(root):
        raise RefusedPath("that path leads outside the results folder")
    if not target.is_file():
        raise FileNotFoundError(relative)
    return target


class ViewServer:
    """The view on `results`, served at ``http://host:port/``.

    Args:
        results: the results folder (`Results`).
        host: interface to bind (default localhost only).
        port: TCP port; 0 picks a free one.
        refresh_s: seconds between the page's polls.
        quiet: do not log requests.

    Raises:
        RuntimeError: plotly is not installed.
        OSError: the port cannot be bound.
    """

    def __init__(
        self,
        results: Results,
        host: str = "127.0.0.1",
        port: int = 8050,
        refresh_s: float = DEFAULT_REFRESH_S,
        quiet: bool = True,
    ) -> None:
        self.results = results
        self.refresh_s = refresh_s
        self.quiet = quiet
        self.static = {name: STATIC_DIR / name for name in STATIC_FILES}
        self.static[PLOTLY_JS] = plotly_bundle()
        self.index_html = (STATIC_DIR / "index.html").read_bytes()
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port/`` as bound."""
        host, port = self.httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host}:{port}/"

    def serve_forever(self) -> None:
        """Serve until interrupted."""
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> ViewServer:
        """Serve from a daemon thread (tests, the benchmark); `stop` ends it."""
        self._thread = threading.Thread(target=self.serve_forever, name="ndt-view", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the API ------------------------------------------------------------------------------------
    def api(self, route: str, query: dict[str, str]) -> dict[str, Any]:
        """Answer one API route.

        Raises:
            KeyError: an unknown sweep, run or route (404).
            ValueError: a bad parameter (400).
        """
        results = self.results
        if route == "stats":
            return vars(results.counters).copy()
        results.refresh()
        if route == "index":
            return {**results.index(), "refresh_s": self.refresh_s}
        sweep = results.sweep(query.get("sweep", ""))
        metric = query.get("metric") or DEFAULT_METRIC
        version = query.get("v")
        if route == "sweep":
            if version is not None and version == str(sweep.version):
                return {"version": sweep.version, "unchanged": True}
            return sweep.grid(metric)
        if route == "run":
            name = query.get("run", "")
            rows = sweep.rows.get(name)
            if rows is not None and version is not None and version == f"{rows.version}:{sweep.version}":
                return {"version": version, "unchanged": True}
            out = sweep.run_view(name, metric, results.root, results.command_dir(sweep))
            out["version"] = f"{out['version']}:{sweep.version}"
            out["sweep"] = sweep.name
            return out
        if route == "compare":
            names = [n for n in query.get("runs", "").split(",") if n]
            layer_arg = query.get("layer", "mean")
            layer = None if layer_arg in ("", "mean") else int(layer_arg)
            return sweep.compare(names, metric, layer, query.get("band") in ("1", "true"))
        raise KeyError(route)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "ndt-view"
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                if not server.quiet:
                    super().log_message(format, *args)

            def _send(self, status: int, body: bytes, content_type: str, cache: str = "no-store") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", cache)
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _text(self, status: int, text: str) -> None:
                self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8")

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                try:
                    path = check_request_path(self.path)
                except RefusedPath as err:
                    self._text(HTTPStatus.FORBIDDEN, f"refused: {err}")
                    return
                query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
                try:
                    self._route(path, query)
                except RefusedPath as err:
                    self._text(HTTPStatus.FORBIDDEN, f"refused: {err}")
                except (KeyError, FileNotFoundError) as err:
                    self._text(HTTPStatus.NOT_FOUND, f"not found: {err}")
                except ValueError as err:
                    self._text(HTTPStatus.BAD_REQUEST, f"bad request: {err}")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the page went away mid-answer (a reload): nothing to tell it

            def _route(self, path: str, query: dict[str, str]) -> None:
                if path in ("/", "/index.html"):
                    self._send(HTTPStatus.OK, server.index_html, "text/html; charset=utf-8")
                elif path.startswith("/static/"):
                    file = server.static[path.removeprefix("/static/")]
                    ctype = "text/css" if file.suffix == ".css" else "text/javascript"
                    # The bundle is 4.8 MB: let the browser keep it for the session.
                    cache = "max-age=3600" if file.name == PLOTLY_JS else "no-cache"
                    self._send(HTTPStatus.OK, file.read_bytes(), f"{ctype}; charset=utf-8", cache)
                elif path.startswith("/api/"):
                    body = json.dumps(server.api(path.removeprefix("/api/"), query), allow_nan=False)
                    self._send(HTTPStatus.OK, body.encode(), "application/json")
                elif path.startswith("/files/"):
                    file = resolve_file(server.results.root, path.removeprefix("/files/"))
                    ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                    self._send(HTTPStatus.OK, file.read_bytes(), ctype, "no-cache")
                else:
                    raise KeyError(path)

            def _refuse_method(self) -> None:
                self._text(HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET and HEAD only")

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method

        return Handler


def serve(
    root: str,
    host: str = "127.0.0.1",
    port: int = 8050,
    refresh_s: float = DEFAULT_REFRESH_S,
    stale_after_s: float | None = None,
    detector: str | None = None,
    quiet: bool = True,
    announce: Callable[[str], None] = print,
) -> None:
    """Read the results folder once, then serve it until interrupted (``python -m ndt.view``)."""
    kwargs: dict[str, Any] = {"detector": detector, "min_interval_s": min(refresh_s / 2, 1.0)}
    if stale_after_s is not None:
        kwargs["stale_after_s"] = stale_after_s
    results = Results(root, **kwargs)
    results.refresh(force=True)
    server = ViewServer(results, host, port, refresh_s, quiet)
    n_runs = sum(len(s.status) for s in results.sweeps.values())
    announce(f"ndt.view: {len(results.sweeps)} sweep(s), {n_runs} run(s) under {root}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        announce(f"warning: bound to {host}: anyone who can reach this machine can read {root}")
    announce(f"open {server.url}  (Ctrl-C stops)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
