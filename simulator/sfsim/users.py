"""Users of the simulated org: profiles and per-object permissions (create, read, edit, delete).

Every user is a "System Administrator" unless the control API says otherwise; a "Read Only" user
may read every object and change none. Describe answers from these permissions and the sObject
routes and SOQL enforce them, as Salesforce's object-level security does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import SfError, not_found

SYSTEM_ADMINISTRATOR = "System Administrator"
READ_ONLY = "Read Only"
STANDARD_USER = "Standard User"
ACTIONS = ("read", "create", "edit", "delete")


@dataclass(frozen=True)
class ObjectPermissions:
    read: bool = True
    create: bool = True
    edit: bool = True
    delete: bool = True

    def allows(self, action: str) -> bool:
        return bool(getattr(self, action))


PROFILES: dict[str, ObjectPermissions] = {
    SYSTEM_ADMINISTRATOR: ObjectPermissions(),
    STANDARD_USER: ObjectPermissions(),
    READ_ONLY: ObjectPermissions(read=True, create=False, edit=False, delete=False),
}


@dataclass
class UserProfile:
    profile: str = SYSTEM_ADMINISTRATOR
    objects: dict[str, ObjectPermissions] = field(default_factory=dict)  # lower-case names

    def permissions(self, object_name: str) -> ObjectPermissions:
        return self.objects.get(object_name.lower(), PROFILES[self.profile])


class Users:
    """Profiles by username; unknown users are System Administrators."""

    def __init__(self) -> None:
        self._users: dict[str, UserProfile] = {}

    def set(
        self, username: str, profile: str, objects: dict[str, dict[str, bool]] | None = None
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r} (one of {', '.join(PROFILES)})")
        base = PROFILES[profile]
        overrides = {
            name.lower(): replace(base, **{k: v for k, v in perms.items() if k in ACTIONS})
            for name, perms in (objects or {}).items()
        }
        self._users[username] = UserProfile(profile, overrides)

    def get(self, username: str) -> UserProfile:
        return self._users.get(username, UserProfile())

    def permissions(self, username: str, object_name: str) -> ObjectPermissions:
        return self.get(username).permissions(object_name)


def insufficient_access() -> SfError:
    return SfError(
        400, "INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id"
    )


def require(users: Users, username: str, object_name: str, action: str) -> None:
    """Raise Salesforce's answer when `username` may not `action` records of `object_name`.

    An object the user cannot read is invisible: its sObject URLs answer NOT_FOUND."""
    perms = users.permissions(username, object_name)
    if not perms.read:
        raise not_found()
    if not perms.allows(action):
        raise insufficient_access()


def invalid_type(object_name: str) -> SfError:
    return SfError(400, "INVALID_TYPE", f"sObject type '{object_name}' is not supported.")
