"""What every handler shares: JSON in and out, the error body, pagination, file streaming."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

import tornado.web
from pydantic import BaseModel, ConfigDict, ValidationError
from tornado.iostream import StreamClosedError

from orchestrator.errors import (
    BodyTimeout,
    ChecksumMismatch,
    NotFound,
    OrchestratorError,
    PayloadTooLarge,
    RangeNotSatisfiable,
    StorageUnavailable,
    Unauthorized,
    ValidationFailed,
    validation_failed,
)
from orchestrator.models import PageNumber, PageSize
from orchestrator.server.api.origin import HostPolicy
from orchestrator.server.auth import Principal
from orchestrator.server.service import Service
from orchestrator.storage import Storage, is_storage_failure

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class Query(BaseModel):
    """The query parameters of one route; unknown ones are ignored, an empty one is absent."""

    model_config = ConfigDict(extra="ignore")


class Paged(Query):
    page: PageNumber = 1
    page_size: PageSize = 100


@dataclass(frozen=True)
class Answer:
    """An answer besides an operation's main one."""

    status: int
    model: Any
    description: str


@dataclass
class Operation:
    """One method of a handler: what it reads and answers. The handler reads its query through
    `query` (BaseHandler.query_args) and its JSON body through `body`; the OpenAPI document
    (api/openapi.py) is generated from these declarations."""

    summary: str
    body: type[BaseModel] | None = None  # a JSON body
    query: type[Query] | None = None
    response: Any = None  # the main answer's JSON model
    status: int = 200
    answers: tuple[Answer, ...] = ()  # other statuses it answers
    form: type[BaseModel] | None = None  # a multipart body: fields as text, files as parts
    raw_body: bool = False  # an application/octet-stream body
    body_required: bool = True
    raw_response: str | None = None  # a media type answered as bytes
    also_as: dict[str, Any] = field(default_factory=dict)  # the main answer in other media types
    ranges: bool = False  # a download: 206 to a Range request


HTTP_METHODS = ("get", "post", "patch", "put", "delete")
BODY_SLACK = 1024 * 1024  # multipart boundaries and headers around an upload's bytes


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """Every body is streamed in, so each limit is answered with a 413 JSON error from our
    own code: tornado's server-wide limit would close the connection with a bare 400.

    A request with a body is authenticated before a byte of it is read; one without is
    authenticated just before its method runs, so a refusal never leaves an unread body that
    makes tornado drop the keep-alive connection.
    """

    openapi: dict[str, Operation] = {}
    path_model: type[BaseModel] | None = None  # what the path parameters must be, beyond the route's regex
    public = False  # answers without a token (liveness only)
    principal: Principal | None = None
    json_body: bytearray | None = None
    _body_problem: BaseException | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in HTTP_METHODS:
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_checked", False):
                setattr(cls, name, _checked_first(method))

    @property
    def service(self) -> Service:
        return self.application.settings["service"]

    @property
    def user(self) -> str:
        assert self.principal is not None
        return self.principal.user

    async def prepare(self) -> None:
        """Before a byte of the body is read: refuse what a browser was tricked into sending,
        then (for a body) who asks, then set up where the body goes."""
        self.refuse_foreign()
        if self.has_body:
            self.authenticate()
            self._watch_body_idle()
        await self.start_body()

    async def start_body(self) -> None:
        """Where the body goes; subclasses that stream uploads replace it."""
        self.start_json_body()

    def refuse_foreign(self) -> None:
        headers = self.request.headers
        policy: HostPolicy = self.application.settings["host_policy"]
        policy.check_host(self.request.host)
        policy.check_origin(self.request.method or "", self.request.host,
                            headers.get("Origin"), headers.get("Referer"))

    @property
    def has_body(self) -> bool:
        headers = self.request.headers
        length = headers.get("Content-Length")
        return bool(headers.get("Transfer-Encoding")) or (length is not None and length != "0")

    def start_json_body(self) -> None:
        """Buffer a JSON body up to its limit; past it, remember a 413 and discard the rest."""
        self._received = 0
        self._body_limit = self.service.settings.max_json_bytes
        if not self.has_body:
            return
        self.request.connection.set_max_body_size(self.service.settings.max_upload_bytes + BODY_SLACK)
        self.refuse_declared_over(self._body_limit, "JSON bodies are limited")
        self.json_body = bytearray()

    def refuse_declared_over(self, limit: int, what: str) -> None:
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"{what} to {limit} bytes; this one declares {declared}")

    async def data_received(self, chunk: bytes) -> None:
        self._body_seen = self._loop_time()
        await self.receive(chunk)
        self._body_seen = self._loop_time()  # slow storage is not the client's idleness

    async def receive(self, chunk: bytes) -> None:
        """One chunk of the body; subclasses that stream uploads replace it."""
        if self._body_problem is not None or self.json_body is None:
            return
        self._received += len(chunk)
        if self._received > self._body_limit:
            self._body_problem = PayloadTooLarge(f"JSON bodies are limited to {self._body_limit} bytes")
            self.json_body = None
            return
        self.json_body += chunk

    def before_method(self) -> None:
        """Run by every HTTP method first: who asks (if prepare could not tell yet), and what
        went wrong while the body streamed in."""
        self._stop_body_watch()  # the body has all arrived
        if self.principal is None:
            self.authenticate()
        if self._body_problem is not None:
            raise self._body_problem

    def authenticate(self) -> None:
        self.principal = self._identify()

    def _identify(self) -> Principal:
        """Who is asking. A token that is given must be valid; none is needed only while
        authentication is off (then everyone is the default owner, as on a one-user machine)."""
        header = self.request.headers.get("Authorization")
        tokens = self.service.tokens
        principal = tokens.authenticate(header)
        if principal is None and not self.public and (header or tokens.required()):
            raise Unauthorized("a valid API token is required: 'Authorization: Token <token>'")
        return principal or Principal(self.service.settings.default_owner, admin=True)

    def access_revoked(self) -> bool:
        """Long streams ask this as they go: the token may have been revoked, or
        authentication turned on, since the request began."""
        try:
            return self._identify() != self.principal
        except Unauthorized:
            return True

    # ---- an idle body is closed ---------------------------------------------------------

    _body_watch: asyncio.TimerHandle | None = None

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def _watch_body_idle(self) -> None:
        """Close a body that sends nothing for body_idle_timeout_s. Tornado's own body_timeout
        counts the whole upload, which would cut off a large one on a slow link."""
        self._body_seen = self._loop_time()
        self._schedule_body_check(self.service.settings.body_idle_timeout_s)

    def _schedule_body_check(self, delay: float) -> None:
        self._body_watch = asyncio.get_running_loop().call_later(delay, self._check_body_idle)

    def _check_body_idle(self) -> None:
        limit = self.service.settings.body_idle_timeout_s
        idle = self._loop_time() - self._body_seen
        if idle < limit:
            return self._schedule_body_check(limit - idle)
        self._body_watch = None
        logger.info("closing %s %s: its body sent nothing for %g s", self.request.method,
                    self.request.path, limit)
        self.send_error(408, exc_info=(BodyTimeout, BodyTimeout(limit), None))

    def _stop_body_watch(self) -> None:
        if self._body_watch is not None:
            self._body_watch.cancel()
            self._body_watch = None

    def on_connection_close(self) -> None:
        self._stop_body_watch()
        super().on_connection_close()

    def on_finish(self) -> None:
        self._stop_body_watch()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("X-Content-Type-Options", "nosniff")

    # ---- output -----------------------------------------------------------------------

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        if isinstance(payload, BaseModel):
            self.finish(payload.model_dump_json())
        else:
            self.finish(json.dumps(payload, default=_json_default))

    def send_created(self, payload: BaseModel, location: str) -> None:
        self.set_header("Location", location)
        self.send_json(payload, 201)

    def send_page(self, count: int, results: list[Any], page: int, page_size: int) -> None:
        self.send_json(
            {
                "count": count,
                "next": self._page_url(page + 1) if page * page_size < count else None,
                "previous": self._page_url(page - 1) if page > 1 else None,
                "results": [_dump(item) for item in results],
            }
        )

    def send_list(self, items: list[Any]) -> None:
        """A whole list the service read, answered a page of it as the query asks."""
        query = self.query_args()
        start = (query.page - 1) * query.page_size
        self.send_page(len(items), items[start:start + query.page_size], query.page, query.page_size)

    def _page_url(self, page: int) -> str:
        query = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        query["page"] = str(page)
        return f"{self.request.protocol}://{self.request.host}{self.request.path}?{urlencode(query)}"

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        error = _public_error(exc, status_code)
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        if isinstance(error, Unauthorized):
            self.set_header("WWW-Authenticate", 'Token realm="orchestrator"')
        if not self._body_read():
            self.set_header("Connection", "close")  # tornado will not read the rest of it
        if error.status == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.finish(json.dumps(error.to_json()))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, (OrchestratorError, ValidationError)):
            return
        super().log_exception(typ, value, tb)

    # ---- input ------------------------------------------------------------------------

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The methods this route answers (RFC 9110 wants them listed with a 405)."""
        base = tornado.web.RequestHandler
        return [name.upper() for name in HTTP_METHODS if getattr(cls, name) is not getattr(base, name)]

    def _body_read(self) -> bool:
        body = self.request.body
        return not isinstance(body, asyncio.Future) or body.done()

    def parse_body(self, model: type[M], body: bytes | None = None) -> M:
        raw = bytes(self.json_body or b"") if body is None else body
        if not raw:
            raise ValidationFailed("the request needs a JSON body", {"body": "empty"})
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_failed(exc) from None

    def query_args(self) -> Any:
        """The query, validated by the model this method declares (a 400 names each field)."""
        operation = self.openapi[(self.request.method or "").lower()]
        assert operation.query is not None, "declare the query model in openapi"
        values = {name: self.get_query_argument(name) for name in self.request.query_arguments}
        try:
            return operation.query.model_validate({k: v for k, v in values.items() if v != ""})
        except ValidationError as exc:
            raise validation_failed(exc) from None

    # ---- downloads --------------------------------------------------------------------

    async def send_stored(
        self, storage: Storage, key: str, size: int, sha256: str, content_type: str, filename: str,
        verify: bool = False,
    ) -> None:
        """Stream a stored object in chunks, honouring a single HTTP Range.

        With `?verify=true` the whole object is read and checked against its recorded size
        and sha256 first, so a mismatch is a clear 409 rather than a broken stream.
        """
        start, end = self._byte_range(size)
        if verify:
            await verify_stored(storage, key, size, sha256)
        partial = (start, end) != (0, size)
        self.set_status(206 if partial else 200)
        self.set_header("Content-Type", content_type)
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("ETag", f'"{sha256}"')
        self.set_header("X-Checksum-Sha256", sha256)
        self.set_header("Content-Disposition", _attachment(filename))
        self.set_header("Content-Length", str(end - start))
        if partial:
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if end <= start:
            self.finish()
            return
        chunks = storage.iter_chunks(key, start, end)
        try:
            while chunk := await asyncio.to_thread(next, chunks, b""):
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            return
        except FileNotFoundError:
            raise NotFound("the stored bytes are missing") from None
        finally:
            chunks.close()
        self.finish()

    def _byte_range(self, size: int) -> tuple[int, int]:
        header = self.request.headers.get("Range")
        if not header:
            return 0, size
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
        if not match or match.groups() == ("", ""):
            raise RangeNotSatisfiable(size)
        first, last = match.groups()
        if first == "":
            start, end = max(0, size - int(last)), size
        else:
            start = int(first)
            end = min(size, int(last) + 1) if last else size
        if start >= size or end <= start:
            raise RangeNotSatisfiable(size)
        return start, end


async def verify_stored(storage: Storage, key: str, size: int, sha256: str) -> None:
    try:
        actual = await asyncio.to_thread(storage.info, key)
    except FileNotFoundError:
        raise NotFound("the stored bytes are missing") from None
    if (actual.size, actual.sha256) != (size, sha256):
        raise ChecksumMismatch(
            f"stored bytes ({actual.size} bytes, sha256 {actual.sha256}) do not match the "
            f"recorded {size} bytes, sha256 {sha256}"
        )


def _checked_first(method: Any) -> Any:
    @functools.wraps(method)
    def checked(self: BaseHandler, *args: Any, **kwargs: Any) -> Any:
        self.before_method()
        return method(self, *args, **kwargs)

    checked._checked = True  # type: ignore[attr-defined]
    return checked


def _public_error(exc: BaseException | None, status_code: int) -> OrchestratorError:
    if isinstance(exc, OrchestratorError):
        return exc
    if isinstance(exc, ValidationError):
        return validation_failed(exc)
    if isinstance(exc, tornado.web.HTTPError):
        error = OrchestratorError(exc.log_message or exc.reason or f"HTTP {exc.status_code}")
        error.status = exc.status_code
        error.code = {405: "method_not_allowed", 404: "not_found"}.get(exc.status_code, "bad_request")
        return error
    if exc is not None and is_storage_failure(exc):
        return StorageUnavailable(f"storage error: {type(exc).__name__}: {exc}"[:1000])
    error = OrchestratorError("internal error; the server log has the details")
    error.status = status_code if status_code >= 400 else 500
    error.code = "internal_error"
    return error


def _dump(item: Any) -> Any:
    return item.model_dump(mode="json") if isinstance(item, BaseModel) else item


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _attachment(filename: str) -> str:
    from urllib.parse import quote

    return f"attachment; filename*=UTF-8''{quote(filename.rsplit('/', 1)[-1])}"


class NotFoundHandler(BaseHandler):
    """Unknown routes answer the same JSON error as unknown ids, from the method, once the
    request has been read: answered from `prepare`, tornado closes the connection after the
    answer, and a client reusing it has its next request reset."""

    async def get(self, *_: Any) -> None:
        raise NotFound(f"no route {self.request.method} {self.request.path}")

    post = put = patch = delete = head = options = get
