"""What to do about a refused token request: the usual setup mistakes behind each answer of
Salesforce's token endpoint (its `error` and `error_description`)."""

from __future__ import annotations

from worker.accounts import Account, Flow

PROPAGATION = "changes to an External Client App take up to 10 minutes to reach the org"


def auth_hint(account: Account, error: str, description: str) -> str:
    text = description.lower()
    if error == "invalid_client_id":
        return (
            "the org does not know this consumer key: check client_id, that instance_url is the "
            f"My Domain of the org that owns the app, or wait ({PROPAGATION})"
        )
    if error == "invalid_client":
        return (
            "the consumer secret does not match the consumer key: copy both again from the "
            f"External Client App's OAuth settings ({PROPAGATION})"
        )
    if "not supported on this domain" in text:
        return (
            "use the org's My Domain URL (https://NAME.my.salesforce.com) as instance_url, "
            "not login.salesforce.com or test.salesforce.com"
        )
    if "no client credentials user" in text:
        return (
            "enable the Client Credentials Flow in the app's OAuth settings and set its Run As "
            f"user (an API-enabled integration user); {PROPAGATION}"
        )
    if "hasn't approved" in text or "not approved" in text:
        return (
            "the user is not pre-authorized for the app: set 'Admin approved users are "
            "pre-authorized' in the app's policies and assign the user's profile or permission "
            "set to the app"
        )
    if "expired access/refresh token" in text or "expired authorization code" in text:
        if account.flow is Flow.REFRESH_TOKEN:
            return (
                "the refresh token was revoked or rotated out: get a new one with "
                f"`sfworker accounts authorize {account.name}`"
            )
        return "the assertion or code has expired: check the clock of this machine"
    if "authentication failure" in text or "invalid assertion" in text:
        return (
            "the JWT was refused: the certificate uploaded to the app must match private_key, "
            "username must be a pre-authorized user of the org, and sandbox/audience must match"
        )
    if "ip restricted" in text or text.strip() == "ip":
        return "the org's IP restrictions refuse this machine: relax the app's IP relaxation policy"
    if "inactive user" in text:
        return "the integration user is inactive: activate it or choose another Run As user"
    if error == "unsupported_grant_type":
        return f"the {account.flow.value} flow is not enabled for this app"
    if error == "rate_limit_exceeded":
        return "too many logins for this user this hour (3,600): wait, and check for a login loop"
    return f"check the External Client App's OAuth settings and policies ({PROPAGATION})"
