"""Which account (and location) a recipient address belongs to.

Order: our own reply address (``<reply_local>+r-<token>@<reply_domain>``), an exact
location address, an exact account address, an account ``@domain`` route, and last, when
exactly one account is configured and ``catch_all_single_account`` is on, that account.
Anything else is refused at RCPT time (550): eleads never relays.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config import Settings


@dataclass(frozen=True)
class Route:
    account: str | None  # None for reply addresses: the token names the account
    location: str | None = None
    is_reply_address: bool = False


def _strip_tag(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def route_recipient(settings: Settings, address: str) -> Route | None:
    address = address.strip().strip("<>").lower()
    if "@" not in address:
        return None
    local, _, domain = address.rpartition("@")
    out = settings.outbound
    if domain == out.reply_domain.lower() and local.startswith(f"{out.reply_local.lower()}+r-"):
        return Route(account=None, is_reply_address=True)
    plain = _strip_tag(address)
    for account in settings.accounts:
        for location in account.locations:
            if address in location.inbound_addresses or plain in location.inbound_addresses:
                return Route(account=account.id, location=location.key)
    for account in settings.accounts:
        if address in account.inbound_addresses or plain in account.inbound_addresses:
            return Route(account=account.id)
    for account in settings.accounts:
        if f"@{domain}" in account.inbound_addresses:
            return Route(account=account.id)
    if settings.catch_all_single_account and len(settings.accounts) == 1:
        return Route(account=settings.accounts[0].id)
    return None
