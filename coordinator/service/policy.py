"""Who may see and change what. Every use case asks here; no route decides access by itself.

Admins see and change everything. Other callers see their organization's resources and change their
own; a dialect may narrow what they see to their own instances (the panel dialect does: a panel user's key
lists only that user's instances). A resource of another organization is reported as missing where the
dialect hides existence, and as forbidden where it does not (a foreign clientId, for instance).
"""

from __future__ import annotations

from coordinator.domain.records import Principal
from coordinator.service.errors import Forbidden, NotFound


def require_admin(caller: Principal, action: str = "this action") -> None:
    if not caller.admin:
        raise Forbidden(f"{action} needs an admin")


def can_see(caller: Principal, organization_id: int) -> bool:
    return caller.admin or caller.organization_id == organization_id


def check_visible(
    caller: Principal,
    organization_id: int,
    what: str,
    *,
    field: str | None = None,
    owner_id: str | None = None,
) -> None:
    """Hide a foreign organization's resource behind the same answer as a missing one; with ``owner_id``
    (a dialect that shows callers only their own), also another user's."""
    if not can_see(caller, organization_id) or (
        owner_id is not None and not caller.admin and caller.user_id != owner_id
    ):
        raise NotFound(f"{what} does not exist", field=field)


def check_organization(caller: Principal, organization_id: int) -> None:
    """For dialects that name the organization in the path: another tenant's id is forbidden."""
    if not can_see(caller, organization_id):
        raise Forbidden("this organization is not yours")


def check_owner(
    caller: Principal, owner_id: str, organization_id: int, what: str, *, field: str | None = None
) -> None:
    """Change rights: admins, or the owner. Others of the same organization may look but not touch."""
    check_visible(caller, organization_id, what, field=field)
    if not caller.admin and caller.user_id != owner_id:
        raise Forbidden(f"only the owner or an admin may change {what}", field=field)
