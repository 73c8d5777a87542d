"""Profile handlers: which scheduling profile runs for a request.

igw runs one profile per request. ``single-profile-handler`` needs exactly one profile;
``header-profile-handler`` (the reference's ``EPP-Profile`` header, default profile
``decode``) chooses a profile by request header, which is also how igw lets one config carry
both the reference's weighted profile and the ``predicted-ttft`` cost-model profile. The
multi-stage handlers (P/D disaggregation, data-parallel) are not implemented in igw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from igw.pipeline import Request


class HeaderProfileParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    headerName: str = "EPP-Profile"
    defaultProfile: str = "decode"


class SingleProfileHandler:
    type = "single-profile-handler"

    def __init__(self, name: str) -> None:
        self.name = name
        self.profile = ""

    def check(self, profiles: list[str]) -> str | None:
        """None when the profiles suit this handler, else what is wrong."""
        if len(profiles) != 1:
            return (
                f"single-profile-handler needs exactly one scheduling profile, got "
                f"{len(profiles)}; add a header-profile-handler plugin to choose among several"
            )
        self.profile = profiles[0]
        return None

    def select(self, request: Request) -> str:
        return self.profile


class HeaderProfileHandler:
    type = "header-profile-handler"

    def __init__(self, name: str, params: HeaderProfileParams) -> None:
        self.name = name
        self.header = params.headerName.lower()
        self.default = params.defaultProfile
        self.profiles: frozenset[str] = frozenset()

    def check(self, profiles: list[str]) -> str | None:
        if self.default not in profiles:
            return (
                f"header-profile-handler defaultProfile {self.default!r} is not a scheduling "
                f"profile; profiles: {', '.join(profiles) or 'none'}"
            )
        self.profiles = frozenset(profiles)
        return None

    def select(self, request: Request) -> str:
        value = (request.headers.get(self.header) or "").strip()
        return value if value in self.profiles else self.default
