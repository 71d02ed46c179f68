"""Return-lead alerts: who came back, what they asked for, and what they are looking at.

A session of a linked visitor is a *return visit* when it starts after the time of at
least one of the visitor's leads (an eLead's Date header, or its received time when that
is earlier or the header is missing). A session that started before the lead and goes
on after it is the enquiry itself, not a return. Exactly one alert per session: the
session row records it (``alert_state``), in the same transaction as the alert row and
its outbox notification. An optional cool-down (``visits.cooldown_minutes``) suppresses
alerts for the same person whose previous alerted visit started shortly before.

Who the person is: the visitor's linked eLeads, every eLead of the same Prospect(s), and
every visitor id linked to any of those (a Prospect may browse from several devices).
Recipients: the account's ``notifications.return_lead`` plus the ``return_lead_alerts``
of every location the person enquired at (the eLeads' locations and the ``location`` of
the person's form_submit events), deduplicated. No recipient: recorded, not emailed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import ua_parser

from daemon.config import AccountSettings, Settings
from daemon.db.fast import create_row, update_rows
from daemon.db.models import ELead, Prospect, ReturnAlert, VisitForm, VisitorLink, VisitSession
from daemon.notify.outbox import queue_message
from daemon.notify.render import display_time, format_name, format_phone

log = logging.getLogger(__name__)

_CHUNK = 400
#: Earlier visits listed one by one in an alert (the rest are counted).
EARLIER_SHOWN = 10
_BROWSERS = {
    "Mobile Safari": "Safari",
    "Mobile Safari UI/WKWebView": "Safari",
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Chrome Mobile WebView": "Chrome WebView",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Edge Mobile": "Edge",
    "Samsung Internet": "Samsung Internet",
}


@lru_cache(maxsize=4096)
def describe_device(user_agent: str | None) -> str:
    """``iPhone (Safari)``, ``Windows desktop (Chrome)``, ``Android phone (Chrome)``."""
    if not user_agent:
        return "unknown device"
    result = ua_parser.parse(user_agent)
    browser = result.user_agent.family if result.user_agent else None
    os_family = result.os.family if result.os else ""
    device = result.device.family if result.device else ""
    if device in ("iPhone", "iPad", "iPod"):
        kind = device
    elif os_family == "Android":
        kind = "Android phone" if "Mobile" in user_agent else "Android tablet"
    elif os_family == "Windows":
        kind = "Windows desktop"
    elif os_family in ("Mac OS X", "macOS"):
        kind = "Mac"
    elif os_family == "Chrome OS":
        kind = "Chromebook"
    elif os_family in ("Linux", "Ubuntu", "Fedora", "Debian"):
        kind = "Linux desktop"
    else:
        kind = os_family or "unknown device"
    if browser and browser != "Other":
        return f"{kind} ({_BROWSERS.get(browser, browser)})"
    return kind


def lead_time(elead: ELead) -> datetime:
    """When the lead was made: its Date header, or received time if earlier or no Date."""
    times = [t for t in (elead.header_date, elead.received_at) if t is not None]
    return min(times)


def _minutes(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class AlertResult:
    alert: ReturnAlert
    queued: bool


def _recipients(account: AccountSettings, locations: Sequence[str]) -> list[str]:
    out: dict[str, None] = dict.fromkeys(account.notifications.return_lead)
    for key in locations:
        loc = account.location(key)
        if loc is not None:
            out.update(dict.fromkeys(loc.return_lead_alerts))
    return list(out)


def _chunks(values: Iterable[Any]) -> Iterator[list[Any]]:
    ordered = sorted(set(values))
    for i in range(0, len(ordered), _CHUNK):
        yield ordered[i : i + _CHUNK]


class Alerter:
    """Decides the changed sessions of linked visitors of one account, in one batch.

    Everything the decisions and the emails need (eLeads, the person's other eLeads and
    visitor ids, earlier sessions, form locations, recent alerts) is fetched with a few
    bulk queries up front, not per session.
    """

    def __init__(self, *, settings: Settings, account: AccountSettings, now: datetime) -> None:
        self.settings = settings
        self.account = account
        self.now = now

    def run(
        self, sessions: list[tuple[str, VisitSession]], links: Mapping[str, Sequence[int]]
    ) -> list[AlertResult]:
        pending = [(v, s) for v, s in sessions if s.alert_state is None and v in links]
        if not pending:
            return []
        eleads = self._eleads({i for v, _ in pending for i in links[v]})
        # The person: the visitor's eLeads plus every eLead of the same prospect(s).
        prospects = {e.prospect_id for e in eleads.values() if e.prospect_id is not None}
        for chunk in _chunks(prospects):
            for row in ELead.select().where(ELead.prospect.in_(chunk)):
                eleads.setdefault(row.id, row)
        by_prospect: dict[int, list[int]] = {}
        for e in eleads.values():
            if e.prospect_id is not None:
                by_prospect.setdefault(e.prospect_id, []).append(e.id)
        people: list[tuple[str, VisitSession, list[ELead]]] = []
        for visitor, session in pending:
            ids = set(links[visitor])
            for i in list(ids):
                pid = eleads[i].prospect_id if i in eleads else None
                if pid is not None:
                    ids.update(by_prospect.get(pid, []))
            person = [eleads[i] for i in sorted(ids) if i in eleads]
            person = [e for e in person if e.state != "ignored"]
            if any(lead_time(e) < session.start_at for e in person):
                people.append((visitor, session, person))
        if not people:
            return []  # every session started before its leads: enquiries, not returns
        lead_ids = {e.id for _, _, p in people for e in p}
        visitors_of = self._visitors_of(lead_ids)
        everyone = {v for ids in visitors_of.values() for v in ids} | {v for v, _, _ in people}
        history = self._history(everyone, max(s.start_at for _, s, _ in people))
        locations = self._form_locations(everyone)
        pids = self._pids({e.prospect_id for _, _, p in people for e in p if e.prospect_id})
        recent = self._recent_alerts(lead_ids, people)
        out: list[AlertResult] = []
        for visitor, session, person in sorted(people, key=lambda item: item[1].start_at):
            visitors = {visitor}
            for e in person:
                visitors.update(visitors_of.get(e.id, ()))
            result = self._decide(
                session,
                person,
                history=[
                    h
                    for v in visitors
                    for h in history.get(v, ())
                    if h.id != session.id and h.start_at <= session.start_at
                ],
                locations={loc for v in visitors for loc in locations.get(v, ())},
                pids=pids,
                recent=recent,
            )
            if result is not None:
                out.append(result)
        return out

    # --- bulk reads -------------------------------------------------------------------

    def _eleads(self, ids: set[int]) -> dict[int, ELead]:
        found: dict[int, ELead] = {}
        for chunk in _chunks(ids):
            found.update((e.id, e) for e in ELead.select().where(ELead.id.in_(chunk)))
        return found

    def _visitors_of(self, elead_ids: set[int]) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for chunk in _chunks(elead_ids):
            rows = VisitorLink.select(VisitorLink.visitor_id, VisitorLink.elead).where(
                (VisitorLink.account == self.account.id) & VisitorLink.elead.in_(chunk)
            )
            for row in rows:
                out.setdefault(row.elead_id, set()).add(row.visitor_id)
        return out

    def _history(self, visitors: set[str], until: datetime) -> dict[str, list[VisitSession]]:
        out: dict[str, list[VisitSession]] = {}
        for chunk in _chunks(visitors):
            rows = VisitSession.select().where(
                (VisitSession.account == self.account.id)
                & VisitSession.visitor_id.in_(chunk)
                & (VisitSession.start_at <= until)
            )
            for row in rows:
                out.setdefault(row.visitor_id, []).append(row)
        return out

    def _form_locations(self, visitors: set[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for chunk in _chunks(visitors):
            rows = VisitForm.select(VisitForm.visitor_id, VisitForm.location).where(
                (VisitForm.account == self.account.id)
                & VisitForm.visitor_id.in_(chunk)
                & VisitForm.location.is_null(False)
            )
            for row in rows:
                out.setdefault(row.visitor_id, set()).add(str(row.location))
        return out

    def _pids(self, prospect_ids: set[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for chunk in _chunks(prospect_ids):
            rows = Prospect.select(Prospect.id, Prospect.pid).where(Prospect.id.in_(chunk))
            out.update((row.id, row.pid) for row in rows)
        return out

    def _recent_alerts(
        self, elead_ids: set[int], people: list[tuple[str, VisitSession, list[ELead]]]
    ) -> dict[int, list[datetime]]:
        """Session starts of earlier alerts per eLead (only with a cool-down)."""
        out: dict[int, list[datetime]] = {}
        minutes = self.settings.visits.cooldown_minutes
        if minutes <= 0:
            return out
        since = min(s.start_at for _, s, _ in people) - timedelta(minutes=minutes)
        for chunk in _chunks(elead_ids):
            rows = ReturnAlert.select(ReturnAlert.elead, ReturnAlert.session_start).where(
                (ReturnAlert.account == self.account.id)
                & ReturnAlert.elead.in_(chunk)
                & (ReturnAlert.session_start >= since)
            )
            for row in rows:
                if row.elead_id is not None:
                    out.setdefault(row.elead_id, []).append(row.session_start)
        return out

    # --- one session ------------------------------------------------------------------

    def _decide(
        self,
        session: VisitSession,
        person: list[ELead],
        *,
        history: list[VisitSession],
        locations: set[str],
        pids: dict[int, str],
        recent: dict[int, list[datetime]],
    ) -> AlertResult | None:
        start = session.start_at
        earlier_leads = sorted((e for e in person if lead_time(e) < start), key=lead_time)
        primary = earlier_leads[-1]
        minutes = self.settings.visits.cooldown_minutes
        if minutes > 0:
            window = start - timedelta(minutes=minutes)
            if any(window < t <= start for e in person for t in recent.get(e.id, ())):
                update_rows(VisitSession, ("alert_state",), [(session.id, ("cooldown",))])
                log.info(
                    "event=return_lead_cooldown account=%s visitor=%s session_start=%s",
                    self.account.id,
                    session.visitor_id,
                    start.isoformat(),
                )
                return None
            for e in person:
                recent.setdefault(e.id, []).append(start)
        keys = sorted(locations | {str(e.location) for e in earlier_leads if e.location})
        recipients = _recipients(self.account, keys)
        pid = pids.get(primary.prospect_id) if primary.prospect_id is not None else None
        context = _context(
            account=self.account,
            session=session,
            primary=primary,
            pid=pid,
            enquiries=earlier_leads,
            history=sorted(history, key=lambda h: h.start_at),
            locations=keys,
        )
        subject = (
            f"Return visit: {context['name']}{f' ({pid})' if pid else ''} is back on the "
            f"website (visit {context['totals']['visits']})"
        )
        notification = queue_message(
            kind="return_lead",
            to=recipients,
            subject=subject,
            template="return_lead",
            context=context,
            settings=self.settings,
            now=self.now,
            account=self.account.id,
            elead=primary,
        )
        lead = (primary.parse or {}).get("lead") or {}
        alert = create_row(
            ReturnAlert,
            account=self.account.id,
            visitor_id=session.visitor_id,
            session=session.id,
            session_start=start,
            elead=primary.id,
            prospect=pid,
            email=lead.get("email"),
            locations=keys,
            recipients=recipients,
            notification=notification.id if notification is not None else None,
            log=session.log,
            created_at=self.now,
        )
        update_rows(VisitSession, ("alert_state",), [(session.id, ("alerted",))])
        log.info(
            "event=return_lead_alert account=%s visitor=%s elead=%s session_start=%s "
            "recipients=%d queued=%s",
            self.account.id,
            session.visitor_id,
            primary.public_id,
            start.isoformat(),
            len(recipients),
            notification is not None,
        )
        return AlertResult(alert, notification is not None)


def _pages(session: VisitSession) -> list[dict[str, str]]:
    return [
        {"time": f"{_utc(float(ts)):%H:%M}", "page": str(page)}
        for ts, page in session.hits or []
        if isinstance(page, str)
    ]


def _context(
    *,
    account: AccountSettings,
    session: VisitSession,
    primary: ELead,
    pid: str | None,
    enquiries: list[ELead],
    history: list[VisitSession],
    locations: list[str],
) -> dict[str, Any]:
    """Everything the template shows, as plain JSON (it is stored with the outbox row)."""
    lead: dict[str, Any] = dict((primary.parse or {}).get("lead") or {})
    names = {loc.key: loc.name or loc.key for loc in account.locations}
    pages = _pages(session)
    earlier = [
        {
            "start": display_time(s.start_at),
            "duration": _minutes((s.end_at - s.start_at).total_seconds()),
            "pages": s.pages,
            "first_pages": [p["page"] for p in _pages(s)[:5]],
            "device": describe_device(s.user_agent),
            "referrer": s.referrer,
        }
        for s in reversed(history)
    ]
    total_pages = sum(s.pages for s in history) + session.pages
    return {
        "kind": "return_lead",
        "account": {"id": account.id, "name": account.name},
        "visitor_id": session.visitor_id,
        "name": format_name(lead) or "(no name)",
        "email": lead.get("email"),
        "phone": format_phone(lead.get("phone"), account.country),
        "prospect": pid,
        "elead": primary.public_id,
        "enquiries": [
            {
                "elead": e.public_id,
                "received": display_time(lead_time(e)),
                "location": names.get(e.location or "", e.location),
                "source": ((e.parse or {}).get("lead") or {}).get("source"),
                "interest": ((e.parse or {}).get("lead") or {}).get("interest"),
            }
            for e in enquiries
        ],
        "locations": [names.get(key, key) for key in locations],
        "visit": {
            "start": display_time(session.start_at),
            "end": display_time(session.end_at),
            "duration": _minutes((session.end_at - session.start_at).total_seconds()),
            "pages": pages,
            "page_count": session.pages,
            "referrer": session.referrer,
            "device": describe_device(session.user_agent),
            "log": session.log,
        },
        "totals": {
            "visits": len(history) + 1,
            "pages": total_pages,
            "first_visit": display_time(history[0].start_at if history else session.start_at),
            "previous_visit": display_time(history[-1].start_at) if history else None,
        },
        "earlier": earlier[:EARLIER_SHOWN],
        "earlier_more": max(0, len(earlier) - EARLIER_SHOWN),
    }
