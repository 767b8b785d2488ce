"""HTTP errors with a message (and, for DICOMweb, a Warning header per PS3.18 8.6.3)."""

from __future__ import annotations


class HTTPProblem(Exception):
    def __init__(
        self, status: int, message: str, field: str | None = None, dimse_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.dimse_status = dimse_status

    def body(self) -> dict:
        detail: dict = {"detail": self.message}
        if self.field:
            detail["field"] = self.field
        if self.dimse_status is not None:
            detail["dimse_status"] = f"0x{self.dimse_status:04X}"
        return detail
