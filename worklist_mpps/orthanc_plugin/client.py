"""The Orthanc REST API in-process: orthanc-python's ``RestApiGet/Post/Put/Delete``.

The hook (delivery/orthanc.py) and the witness follower (delivery/orthanc_witness.py)
speak to Orthanc through ``OrthancClient._call``; :class:`InProcessClient` answers it
without HTTP, so no credentials exist to configure or to leak. orthanc-python 4.0
returns the body (bytes) of a successful call and raises ``orthanc.OrthancException``
with ``(error code, description)`` otherwise; the code becomes the HTTP status Orthanc's
own REST server answers (404, 400, else 500), so the hook's rules (404 on a metadata
name: declare it; 5xx: retry) hold unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from worklist_mpps.delivery.orthanc import OrthancClient
from worklist_mpps.delivery.worker import Retry

# Orthanc's error codes (orthanc.ErrorCode) answered 404 and 400 by its REST server, as
# OrthancException::ConvertToHttpStatus groups them (OrthancFramework OrthancException.cpp);
# every other code is a 500
NOT_FOUND = ("INEXISTENT_FILE", "INEXISTENT_ITEM", "INEXISTENT_TAG", "UNKNOWN_RESOURCE")
BAD_REQUEST = (
    "BAD_FILE_FORMAT",
    "BAD_PARAMETER_TYPE",
    "BAD_REQUEST",
    "PARAMETER_OUT_OF_RANGE",
    "URI_SYNTAX",
    "BAD_JSON",
)


def http_statuses(error_codes: Any) -> dict[int, int]:
    """Error code -> HTTP status, from orthanc.ErrorCode (``error_codes``)."""
    statuses = {getattr(error_codes, name): 404 for name in NOT_FOUND}
    statuses |= {getattr(error_codes, name): 400 for name in BAD_REQUEST}
    return {int(code): status for code, status in statuses.items()}


class Response:
    """What ``OrthancClient`` reads of a ``requests.Response``: status, body, json()."""

    def __init__(self, status_code: int, content: bytes = b"") -> None:
        self.status_code = status_code
        self.content = content
        self.headers = {"content-type": "application/json" if self._is_json() else "text/plain"}

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def _is_json(self) -> bool:
        try:
            json.loads(self.content)
        except ValueError:
            return False
        return bool(self.content)


class InProcessClient(OrthancClient):
    """OrthancClient over orthanc-python's in-process REST API (``api``: the ``orthanc``
    module, handed over by entry.py, the one module that imports it)."""

    def __init__(self, api: Any) -> None:
        super().__init__("http://orthanc.in-process")
        self.api = api
        self.statuses = http_statuses(api.ErrorCode)

    def check_access(self) -> None:
        """Nothing to check: in-process calls need no credentials, so there are none an
        Orthanc could wrongly accept (the HTTP client refuses an Orthanc that accepts
        empty credentials, issue 17)."""

    def _call(self, method: str, path: str, **kwargs: Any) -> Response:  # type: ignore[override]
        """One REST call, as the HTTP client makes it: 5xx are a Retry, 401/403 too."""
        body = kwargs.get("data", b"")
        try:
            if method == "GET":
                content = self.api.RestApiGet(path)
            elif method == "DELETE":
                content = self.api.RestApiDelete(path)
            elif method == "POST":
                content = self.api.RestApiPost(path, body)
            elif method == "PUT":
                content = self.api.RestApiPut(path, body)
            else:
                raise ValueError(f"method {method} is not served in-process")
            response = Response(200, content or b"")
        except self.api.OrthancException as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
            response = Response(
                self.statuses.get(code, 500), str(exc.args[-1] if exc.args else exc).encode()
            )
        if response.status_code in (401, 403):
            raise Retry(f"Orthanc refused the call (HTTP {response.status_code})")
        if response.status_code >= 500:
            raise Retry(f"Orthanc error HTTP {response.status_code}: {response.text[:100]}")
        return response
