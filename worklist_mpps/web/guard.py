"""What a browser can be made to send: Host, Origin, CORS and request media types.

Any web page can make a browser send requests to a loopback server: a cross-site
``fetch(..., {mode: 'no-cors'})`` (a "simple" request needs no preflight, Fetch
Standard 3.2.3) or DNS rebinding (a hostile name resolved to 127.0.0.1: the
browser calls it same-origin). These plain functions decide, from headers alone,
what the middleware refuses before a route runs:

- a Host that is not one of our names: 421 (RFC 9110 7.4, 15.5.20);
- an unsafe method from another origin (Origin, or Sec-Fetch-Site): 403, unless the
  origin is in ``http_cors_origins``; preflights are answered for those only;
- a request body without its exact media type: 415 (RFC 9110 15.5.16). No CORS
  "simple" Content-Type is accepted, so a browser always preflights a write.
"""

from __future__ import annotations

import re

from worklist_mpps.config import Config

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
CORS_METHODS = "GET, POST, PATCH, DELETE"
CORS_REQUEST_HEADERS = "Authorization, Content-Type, Accept"
CORS_EXPOSED_HEADERS = "Location, Warning, Retry-After"
CORS_MAX_AGE = "600"

JSON = "application/json"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
# Request bodies per path prefix: the management API takes JSON; DICOMweb takes the
# DICOM JSON or XML encodings (PS3.18 8.7.3, F.2, PS3.19 A.1), XML also as
# multipart/related; type="application/dicom+xml" (PS3.18 8.6.1.2).
# The operator page posts HTML forms (application/x-www-form-urlencoded, HTML 4.10.21.7).
FORM = "application/x-www-form-urlencoded"
BODY_MEDIA = {
    "/api/": (JSON,),
    "/modality-": (DICOM_JSON, DICOM_XML, "multipart/related"),
    "/ui/": (FORM,),
}
MULTIPART_TYPES = (DICOM_XML,)

_HOST = re.compile(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?")


def allowed_hosts(cfg: Config) -> frozenset[str]:
    """Host names served: loopback names, ``http_allowed_hosts`` and a specific bind address.

    Loopback names are always allowed: only a client on this machine, or a browser
    told to open localhost itself (then same-origin), sends them.
    """
    names = set(LOOPBACK_HOSTS) | {h.lower() for h in cfg.http_allowed_hosts}
    bind = cfg.http_bind.strip().lower()
    if bind and bind not in ("0.0.0.0", "::"):
        names.add(f"[{bind}]" if ":" in bind else bind)
    return frozenset(names)


def host_name(header: str | None) -> str | None:
    """The host of a Host header (RFC 9110 7.2), lower case, without its port; None if
    missing or malformed."""
    match = _HOST.fullmatch((header or "").strip())
    return match.group(1).lower() if match else None


def host_refusal(header: str | None, allowed: frozenset[str]) -> str | None:
    """Why a Host header is refused (421), or None."""
    name = host_name(header)
    if name is None:
        return "a valid Host header is required"
    if name not in allowed:
        return f"Host {name!r} is not served here (configure it in http_allowed_hosts)"
    return None


def _listed(origin: str | None, cors_origins: list[str]) -> bool:
    """Origins compare case-insensitively (browsers send them lower case, RFC 6454 6.1)."""
    return origin is not None and origin.lower() in {o.lower() for o in cors_origins}


def _own_origins(host_header: str) -> set[str]:
    host = host_header.strip().lower()
    origins = {f"http://{host}", f"https://{host}"}
    for scheme, port in (("http", ":80"), ("https", ":443")):
        if host.endswith(port):
            origins.add(f"{scheme}://{host.removesuffix(port)}")
    return origins


def origin_refusal(
    method: str,
    origin: str | None,
    fetch_site: str | None,
    host_header: str,
    cors_origins: list[str],
) -> str | None:
    """Why an unsafe request from another origin is refused (403), or None.

    Browsers send Origin on every non-GET/HEAD request (Fetch Standard 3.1) and
    Sec-Fetch-Site where supported; a request without either is not a browser's.
    """
    if method.upper() in SAFE_METHODS:
        return None
    if origin is not None:
        if origin.lower() in _own_origins(host_header) or _listed(origin, cors_origins):
            return None
        return (
            f"cross-origin {method} from {origin[:100]!r} refused (allow it with http_cors_origins)"
        )
    if (fetch_site or "").lower() in ("cross-site", "same-site"):
        return f"cross-site {method} refused (Sec-Fetch-Site: {fetch_site})"
    return None


def is_preflight(method: str, headers) -> bool:  # noqa: ANN001 - any header mapping
    return (
        method.upper() == "OPTIONS"
        and "origin" in headers
        and "access-control-request-method" in headers
    )


def preflight(origin: str, cors_origins: list[str]) -> tuple[int, dict[str, str]]:
    """A CORS preflight's status and headers (Fetch Standard 3.2.2): 204 with the allowed
    methods and headers for a configured origin, 403 without CORS headers otherwise."""
    if not _listed(origin, cors_origins):
        return 403, {"Vary": "Origin"}
    return 204, {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": CORS_METHODS,
        "Access-Control-Allow-Headers": CORS_REQUEST_HEADERS,
        "Access-Control-Max-Age": CORS_MAX_AGE,
        "Vary": "Origin",
    }


def cors_headers(origin: str | None, cors_origins: list[str]) -> dict[str, str]:
    """Headers that let a configured origin's script read a response."""
    if origin is None or not _listed(origin, cors_origins):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": CORS_EXPOSED_HEADERS,
        "Vary": "Origin",
    }


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower case, without parameters."""
    return (content_type or "").split(";")[0].strip().lower()


def _parameter(content_type: str, name: str) -> str | None:
    match = re.search(rf';\s*{name}\s*=\s*"?([^";]*)"?', content_type, re.I)
    return match.group(1).strip().lower() if match else None


def media_refusal(method: str, path: str, content_type: str | None, has_body: bool) -> str | None:
    """Why a request body's Content-Type is refused (415), or None.

    A POST, PUT or PATCH (or any request with a body) to the API or DICOMweb names
    one of the media types its routes read, exactly; without a Content-Type nothing
    is guessed.
    """
    accepted = next(
        (types for prefix, types in BODY_MEDIA.items() if path.startswith(prefix)), None
    )
    if accepted is None or (method.upper() not in BODY_METHODS and not has_body):
        return None
    media = media_type(content_type)
    if media == "multipart/related" and media in accepted:
        if _parameter(content_type or "", "type") in MULTIPART_TYPES:
            return None
        return f'multipart/related needs type="{DICOM_XML}" (PS3.18 8.6.1.2)'
    if media in accepted:
        return None
    shown = f"Content-Type {media!r}" if media else "no Content-Type"
    return f"{shown}: send {' or '.join(t for t in accepted if t != 'multipart/related')}"
