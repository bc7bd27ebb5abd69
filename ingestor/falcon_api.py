"""The Falcon Event Streams API over HTTPS: OAuth2 token, feed discovery, stream, session refresh."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import requests

from falcon_lake import __version__
from falcon_lake.settings import DISCOVERABLE_CLOUDS, FALCON_CLOUDS, Secret

log = logging.getLogger(__name__)

TOKEN_RENEW_EARLY_S = 120.0
REFRESH_ACTION = "refresh_active_stream_session"
DEFAULT_REFRESH_INTERVAL_S = 1800.0
# A server's wait is honoured up to this: a bogus hint (e.g. milliseconds) must not stop the ingestor for years.
MAX_RETRY_AFTER_S = 600.0
# Python's datetime takes at most microseconds; Falcon writes nanoseconds.
_FRACTION = re.compile(r"(\.\d{6})\d+")


class FalconApiError(RuntimeError):
    """An HTTP answer the ingestor must recover from; `status` and `retry_after` steer the backoff."""

    def __init__(self, what: str, status: int | None, detail: str = "", retry_after: float | None = None) -> None:
        self.what = what
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"{what}: HTTP {status}{' ' + detail if detail else ''}")


class AppIdHeld(RuntimeError):
    """Discovery answered no feeds: another consumer holds the appId, or the client lacks the scope."""


@dataclass(frozen=True)
class FeedSession:
    """One feed (partition) as discovery described it."""

    feed: str
    data_feed_url: str
    token: Secret
    expiration: datetime | None  # sessionToken.expiration, None when absent or unreadable
    refresh_url: str
    refresh_interval_s: float


def parse_expiration(text: object) -> datetime | None:
    """`sessionToken.expiration` (RFC 3339, fractional seconds up to nanoseconds) as an aware datetime."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", text.strip()).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def retry_after_s(headers: Any, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: the later of `X-RateLimit-RetryAfter` (Falcon: the epoch second
    after which to retry) and `Retry-After` (seconds or an HTTP date, as a proxy may add); None without either.
    Header names are case-insensitive (requests' headers are). At most MAX_RETRY_AFTER_S."""
    now = time.time() if now is None else now
    waits: list[float] = []
    epoch = headers.get("X-RateLimit-RetryAfter")
    if epoch is not None:
        with contextlib.suppress(ValueError):
            waits.append(float(epoch) - now)
    value = headers.get("Retry-After")
    if value is not None:
        try:
            waits.append(float(value))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                waits.append(parsedate_to_datetime(value).timestamp() - now)
    return min(MAX_RETRY_AFTER_S, max(0.0, *waits)) if waits else None


def _feed_id(url: str) -> str:
    # .../sensors/entities/datafeed/v1/<partition>?appId=...
    return url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


class FalconClient:
    """Talks to one Falcon cloud. Thread-safe: the token is shared by every feed reader."""

    def __init__(
        self,
        base_url: str,
        cloud: str | None,
        client_id: str,
        client_secret: Secret,
        app_id: str,
        member_cid: str | None = None,
        timeout_s: float = 30.0,
        on_request: Callable[[str, int], None] | None = None,
    ) -> None:
        self.base_url = base_url
        self.cloud = cloud
        self._client_id = client_id
        self._client_secret = client_secret
        self.app_id = app_id
        self._member_cid = member_cid
        self._timeout = timeout_s
        self._on_request = on_request
        self._session = requests.Session()
        self._session.headers["User-Agent"] = f"falcon-lake/{__version__}"
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def secrets(self) -> list[str]:
        """Values that must never be logged: the client secret and the current tokens."""
        return [self._client_secret.reveal()] + ([self._token] if self._token else [])

    def _count(self, what: str, status: int, response: requests.Response | None = None) -> None:
        if response is not None:
            # URLs carry the appId and offsets, never a credential (those travel in headers and bodies).
            log.debug("%s: %s %s -> HTTP %d", what, response.request.method, response.url, status)
        if self._on_request is not None:
            self._on_request(what, status)

    def _check(self, what: str, response: requests.Response, ok: tuple[int, ...] = (200, 201)) -> None:
        self._count(what, response.status_code, response)
        if response.status_code not in ok:
            detail = ""
            try:
                errors = response.json().get("errors") or []
                if errors:
                    detail = str(errors[0].get("message", ""))[:200]
            except (ValueError, AttributeError):
                detail = response.text[:200].replace("\n", " ")
            raise FalconApiError(what, response.status_code, detail, retry_after_s(response.headers))

    def invalidate_token(self) -> None:
        with self._lock:
            self._token = None

    def bearer(self) -> str:
        """A valid access token, renewed about two minutes before it expires."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._token, ttl = self._request_token()
                log.debug("new access token for client %s, valid %.0fs", self._client_id, ttl)
                # About two minutes early; a short TTL (tests) renews at 90 % of its life.
                self._renew_at = time.monotonic() + ttl - min(TOKEN_RENEW_EARLY_S, ttl * 0.1)
            return self._token

    def _request_token(self) -> tuple[str, float]:
        form = {"client_id": self._client_id, "client_secret": self._client_secret.reveal()}
        if self._member_cid:
            form["member_cid"] = self._member_cid
        response = self._session.post(f"{self.base_url}/oauth2/token", data=form, timeout=self._timeout)
        self._check("token", response)
        region = response.headers.get("X-Cs-Region", "").lower()
        if self.cloud in DISCOVERABLE_CLOUDS and region in FALCON_CLOUDS and region != self.cloud:
            # The customer's tenant lives in another cloud: follow it, as FalconPy does.
            log.info("Falcon cloud %s redirects to %s; using %s", self.cloud, region, FALCON_CLOUDS[region])
            self.cloud, self.base_url = region, FALCON_CLOUDS[region]
            return self._request_token()
        body = response.json()
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise FalconApiError("token", response.status_code, "no access_token in the answer")
        return token, float(body.get("expires_in") or 1799)

    def discover(self, event_types: tuple[str, ...] = ()) -> list[FeedSession]:
        """Every feed of this appId. Raises AppIdHeld when discovery lists none."""
        params = {"appId": self.app_id, "format": "json"}
        bearer = self.bearer()  # first: a new token may move base_url to the customer's cloud
        response = self._session.get(
            f"{self.base_url}/sensors/entities/datafeed/v2",
            params=params,
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=self._timeout,
        )
        if response.status_code == 401:
            self.invalidate_token()
        self._check("discover", response)
        resources = response.json().get("resources") or []
        if not resources:
            raise AppIdHeld(
                f"discovery listed no feeds for appId {self.app_id!r}: another consumer holds it "
                "(a dropped connection keeps it for minutes) or the API client lacks the Event streams scope"
            )
        feeds = []
        for resource in resources:
            url = resource["dataFeedURL"]
            feed = _feed_id(url)
            try:
                interval = float(resource.get("refreshActiveSessionInterval") or 0)
            except (TypeError, ValueError):
                interval = 0.0
            feeds.append(
                FeedSession(
                    feed=feed,
                    data_feed_url=url,
                    token=Secret(resource["sessionToken"]["token"]),
                    expiration=parse_expiration(resource["sessionToken"].get("expiration")),
                    # Discovery names the refresh URL (possibly another host); build it only when it does not.
                    refresh_url=resource.get("refreshActiveSessionURL") or self._refresh_url(feed),
                    refresh_interval_s=interval if interval > 0 else DEFAULT_REFRESH_INTERVAL_S,
                )
            )
        return feeds

    def _refresh_url(self, feed: str) -> str:
        query = urlencode({"action_name": REFRESH_ACTION, "appId": self.app_id})
        return f"{self.base_url}/sensors/entities/datafeed-actions/v1/{feed}?{query}"

    def open_stream(
        self, feed: FeedSession, offset: int | None, event_types: tuple[str, ...], read_timeout_s: float
    ) -> requests.Response:
        """Open the feed at `offset` (None = newest only); the caller reads and closes the response."""
        params: dict[str, Any] = {"whence": 2} if offset is None else {"offset": offset}
        if event_types:
            params["eventType"] = ",".join(event_types)
        separator = "&" if "?" in feed.data_feed_url else "?"
        response = self._session.get(
            f"{feed.data_feed_url}{separator}{urlencode(params)}",
            headers={"Authorization": f"Token {feed.token.reveal()}", "Accept": "application/json"},
            stream=True,
            timeout=(self._timeout, read_timeout_s),
        )
        if response.status_code != 200:
            try:
                self._check("stream", response, ok=(200,))  # reads the error body before the close
            finally:
                response.close()
        self._count("stream", response.status_code, response)
        return response

    def refresh(self, feed: FeedSession) -> None:
        """Keep the feed's stream session alive (POST its refreshActiveSessionURL). 404 means it is gone: reconnect."""
        response = self._session.post(
            feed.refresh_url, headers={"Authorization": f"Bearer {self.bearer()}"}, timeout=self._timeout
        )
        if response.status_code == 401:
            self.invalidate_token()
        self._check("refresh", response, ok=(200, 201, 202, 204))

    def close(self) -> None:
        self._session.close()
