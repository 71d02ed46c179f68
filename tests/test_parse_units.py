"""Unit tests of the lead parsers, the normaliser and the provider rules, on strings.

Messages are built as ``DecodedMessage`` values directly (no MIME), so each test shows
exactly which input a parser sees. Invented people, reserved domains, 555-01xx numbers.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import ConfigError
from daemon.parse import adf, labels, leads, normalise, structured, tables
from daemon.parse.labels import Found, field_for, label_key, pairs_from_lines
from daemon.parse.leads import extract_lead
from daemon.parse.model import LEAD_FIELDS, DecodedMessage, ParseContext, Part
from daemon.parse.rules import RuleSet, default_rules_dir, load_rules

CTX = ParseContext(default_region="US", account="acme")
NO_RULES = RuleSet()


def message(
    text: str = "",
    *,
    html: str | None = None,
    parts: tuple[Part, ...] | None = None,
    subject: str = "New lead",
    sender: str = "form@site.example",
    to: tuple[str, ...] = ("leads@eleads.example",),
    reply_to: tuple[str, ...] = (),
    headers: dict[str, list[str]] | None = None,
    date: datetime | None = None,
) -> DecodedMessage:
    if parts is None:
        parts = ()
        if text:
            parts += (Part("text/plain", None, text.encode(), text),)
        if html is not None:
            parts += (Part("text/html", None, html.encode(), html),)
    return DecodedMessage(
        message_id="unit@test",
        subject=subject,
        from_addr=sender,
        from_name=None,
        reply_to=reply_to,
        to=to,
        date=date,
        headers=headers or {},
        text=text,
        html=html,
        parts=parts,
    )


def lead_of(msg: DecodedMessage, **kwargs: Any) -> dict[str, Any]:
    result = extract_lead(msg, ctx=CTX, rules=kwargs.pop("rules", NO_RULES))
    assert result is not None
    return result.lead


# --- normalise -------------------------------------------------------------------------


def test_clean_strips_control_characters_and_caps() -> None:
    assert normalise.clean("  Ann\r\nMarie\x00\x07 \u200b Lee ") == "Ann Marie Lee"
    assert normalise.clean("n/a") is None and normalise.clean("  ") is None
    assert len(normalise.clean("x" * 50_000) or "") == normalise.MAX_LEN


@pytest.mark.parametrize(
    ("raw", "regions", "want"),
    [
        ("(614) 555-0143 ext 2", ("US",), "+16145550143"),
        ("614.555.0143", ("US",), "+16145550143"),
        ("+1 (416) 555-0182", ("US",), "+14165550182"),
        ("859.555.0116 (home)", ("US",), "+18595550116"),
        ("0113 496 0321", ("US", "GB"), "+441134960321"),
        ("+44 20 7946 0958", ("US",), "+442079460958"),
        ("(555) 555-0100", ("US",), None),
        ("call me", ("US",), None),
        ("6" * 5000, ("US",), None),
    ],
)
def test_phone(raw: str, regions: tuple[str, ...], want: str | None) -> None:
    assert normalise.phone(raw, regions) == want


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("<D.McKenzie@Example.NET>", "d.mckenzie@example.net"),
        ("mailto:Ann@Example.org", "ann@example.org"),
        ("Ann Lee <ann.lee@sub.example.com>", "ann.lee@sub.example.com"),
        ("someone@shop.test", "someone@shop.test"),
        ("not an address", None),
        ("a..b@example.com", None),
        ("a" * 50_000 + "@example.com", None),
    ],
)
def test_email(raw: str, want: str | None) -> None:
    assert normalise.email(raw) == want


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("Dr. Alan J. Pritchard", ("Alan", "Pritchard")),
        ("Nguyen, Thanh", ("Thanh", "Nguyen")),
        ("Mr Graham Pollard", ("Graham", "Pollard")),
        ("Robert Hayes Jr.", ("Robert", "Hayes Jr.")),
        ("Whitfield Jr., Desmond", ("Desmond", "Whitfield Jr.")),
        ("DOUGLAS MCKENZIE", ("DOUGLAS", "MCKENZIE")),
        ("Siobhán O'Reilly", ("Siobhán", "O'Reilly")),
        ("Cher", ("Cher", None)),
        ("Yes", (None, None)),
        ("someone@example.com", (None, None)),
    ],
)
def test_split_name(raw: str, want: tuple[str | None, str | None]) -> None:
    assert normalise.split_name(raw) == want


def test_first_name_drops_title_and_initial() -> None:
    assert normalise.first_name("Dr. Alan J.") == "Alan"
    assert normalise.first_name("Mary Ann") == "Mary Ann"


@pytest.mark.parametrize(
    ("raw", "country", "want"),
    [
        ("ls62qt", None, "LS6 2QT"),
        ("m4c1b5", "CA", "M4C 1B5"),
        ("43081-1234", "US", "43081-1234"),
        ("SE15 4QA", "GB", "SE15 4QA"),
        ("1010", "AT", "1010"),
    ],
)
def test_postal_code(raw: str, country: str | None, want: str) -> None:
    assert normalise.postal_code(raw, country) == want


def test_country_and_region_names() -> None:
    assert normalise.country("United Kingdom") == "GB"
    assert normalise.country("U.S.A.") == "US"
    assert normalise.country("Estados Unidos") == "US"
    assert normalise.country("Atlantis") is None
    assert normalise.region("Ohio") == "OH"
    assert normalise.region("Québec", "CA") == "QC"
    assert normalise.region("oh") == "OH"
    assert normalise.region("West Yorkshire", "GB") == "West Yorkshire"


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (
            "2231 Alder Ridge Rd, Westerville, OH 43081",
            {
                "street": "2231 Alder Ridge Rd",
                "city": "Westerville",
                "region": "OH",
                "postal_code": "43081",
            },
        ),
        (
            "2950 Quarry Lane\nGrove City, OH 43123\nUnited States",
            {
                "street": "2950 Quarry Lane",
                "city": "Grove City",
                "region": "OH",
                "postal_code": "43123",
                "country": "US",
            },
        ),
        ("Toronto, ON M4C 1B5", {"city": "Toronto", "region": "ON", "postal_code": "M4C 1B5"}),
        (
            "14 Alderbrook Mews, Leeds LS6 2QT",
            {"street": "14 Alderbrook Mews", "city": "Leeds", "postal_code": "LS6 2QT"},
        ),
        (
            "Grove City, Ohio 43123",
            {"city": "Grove City", "region": "Ohio", "postal_code": "43123"},
        ),
        ("418 Sycamore Bend Dr", {"street": "418 Sycamore Bend Dr"}),
    ],
)
def test_split_address(raw: str, want: dict[str, str]) -> None:
    assert labels.split_address(raw) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Can someone come out and measure?", True),
        ("Would like someone to stop by and give us an estimate, weekdays are best.", True),
        ("Happy to book a site survey whenever works.", True),
        ("Can I come in Saturday for a test drive?", True),
        ("We're not ready for anyone to come out yet.", False),
        ("No appointment needed, just email a price.", False),
        ("Best time to call: evenings", False),
        ("Happy to drive down to Columbus to pick it up.", False),
        ("¿Pueden hacer una visita para medir?", True),
    ],
)
def test_asks_for_visit(text: str, want: bool) -> None:
    assert normalise.asks_for_visit(text) is want


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("Yes", True),
        ("yes please", True),
        ("Requested - call to schedule", True),
        ("No - quote by email first", False),
        ("Not requested", False),
        ("Tuesday 8 December 2026 at 10:00", True),
        ("Mornings", None),
    ],
)
def test_answer(value: str, want: bool | None) -> None:
    assert normalise.answer(value) is want


def test_appointment_at() -> None:
    after = datetime(2026, 11, 20, 9, 0)
    at = normalise.appointment_at
    assert at("Thursday, December 3, 2026 at 2:00 PM", dayfirst=False, after=after) == (
        datetime(2026, 12, 3, 14, 0),
        None,
    )
    assert at("martes 8 de diciembre de 2026 a las 10:00", dayfirst=True, after=after)[0] == (
        datetime(2026, 12, 8, 10, 0)
    )
    assert at("08/12/2026 10:00", dayfirst=True, after=after)[0] == datetime(2026, 12, 8, 10)
    assert at("1/5 3pm", dayfirst=False, after=after)[0] == datetime(2027, 1, 5, 15, 0)
    assert at("December 3, 2026", dayfirst=False, after=after) == (None, None)
    assert at("evenings", dayfirst=False, after=after) == (None, None)
    when, problem = at("31/31/2026 10:00", dayfirst=False, after=after)
    assert when is None and problem and "unparseable appointment date" in problem


# --- labels ----------------------------------------------------------------------------


def test_label_key_and_field_for() -> None:
    assert label_key("E-Mail Address:") == "e mail address"
    assert label_key("firstName") == "first name"
    assert label_key("Job #") == "job number"
    assert field_for("Your Email") == "email"
    assert field_for("Customer notes") == "comments"
    assert field_for("Correo electrónico") == "email"
    assert field_for("Código postal") == "postal_code"
    assert field_for("Would you like a free in-home design consultation?") == "appointment"
    assert field_for("Best time to call") is None
    assert field_for("Budget") is None
    assert field_for("Homeowner", {"homeowner": "ignore"}) is None
    assert field_for("Cust ref", {"cust ref": "external_id"}) == "external_id"


def test_pairs_from_lines_formats() -> None:
    text = (
        "Lead ID        XY-4410\n"
        "Name ........ Lindgren, Karin\n"
        "E-mail - karin@example.org\n"
        "phone = 614-555-0131\n"
        "Zip:\t43210\n"
        "Budget: $5,000\n"
        "Project\n"
        "Deck staining\n"
        "\n"
        "Comments:\n"
        "First line of the comment\n"
        "second line.\n"
        "\n"
        "Sent from our site"
    )
    found = pairs_from_lines(text.splitlines())
    assert found.pairs == [
        ("external_id", "XY-4410"),
        ("name", "Lindgren, Karin"),
        ("email", "karin@example.org"),
        ("phone", "614-555-0131"),
        ("postal_code", "43210"),
        ("interest", "Deck staining"),
        ("comments", "First line of the comment\nsecond line."),
    ]


def test_pairs_from_lines_lead_reference_heading() -> None:
    found = pairs_from_lines(["ProjectPair Lead #PP-20990012", "", "Customer: Ann Lee"])
    assert ("external_id", "PP-20990012") in found.pairs


def test_multiline_value_stops_at_next_label() -> None:
    found = pairs_from_lines(["Address: 1 Main St", "Springfield, OH 45501", "Phone: 937-555-0101"])
    assert found.pairs[0] == ("address", "1 Main St\nSpringfield, OH 45501")
    assert found.pairs[1] == ("phone", "937-555-0101")


def test_labels_parse_prefers_text_part_only_when_sender_wrote_one() -> None:
    html_only = message("Name: Derived From Html", html="<p>Name: A B</p>", parts=())
    assert labels.parse(html_only) is None


# --- tables ----------------------------------------------------------------------------


def test_html_horizontal_table_and_bold_labels() -> None:
    html = (
        "<style>td{color:red}</style><script>var email='x@example.com'</script>"
        "<table><tr><th>First Name</th><th>Email</th><th>Phone</th></tr>"
        "<tr><td>Nia</td><td>nia@example.com</td><td>614-555-0177</td></tr></table>"
        "<p><b>Zip:</b> 43215<br><strong>Comments:</strong> Hi &amp; thanks</p>"
    )
    found = tables.parse(message(html=html))
    assert found is not None
    assert ("first_name", "Nia") in found.pairs
    assert ("email", "nia@example.com") in found.pairs
    assert ("postal_code", "43215") in found.pairs
    assert ("comments", "Hi & thanks") in found.pairs
    assert all("x@example.com" not in value for _, value in found.pairs)


def test_html_label_row_over_value_row() -> None:
    html = (
        "<table><tr><td colspan=2><strong>Name</strong></td></tr>"
        "<tr><td>&nbsp;</td><td>Omar Haddad</td></tr>"
        "<tr><td colspan=2><strong>Phone</strong></td></tr>"
        "<tr><td>&nbsp;</td><td>(614) 555-0190</td></tr></table>"
    )
    found = tables.parse(message(html=html))
    assert found is not None
    assert found.pairs == [("name", "Omar Haddad"), ("phone", "(614) 555-0190")]


# --- structured -------------------------------------------------------------------------


def test_json_seller_blocks_are_not_the_customer() -> None:
    body = (
        '{"provider": {"name": "LeadCo", "phone": "800-555-0150", "email": "help@leadco.example"},'
        ' "id": "LC-1", "contact": {"fullName": "Ines Roth", "phone": "614-555-0112"}}'
    )
    found = structured.parse_json(message(body))
    assert found is not None
    assert found.pairs == [
        ("source", "LeadCo"),
        ("external_id", "LC-1"),
        ("name", "Ines Roth"),
        ("phone", "614-555-0112"),
    ]


def test_csv_takes_first_row_and_says_so() -> None:
    body = "Name,Email,Phone\nAl Bo,al@example.com,614-555-0101\nCy Do,cy@example.com,614-555-0102"
    found = structured.parse_csv(message(body))
    assert found is not None
    assert ("email", "al@example.com") in found.pairs
    assert found.problems == ["CSV holds 2 rows; the first was taken"]


def test_prose_with_commas_is_not_csv() -> None:
    assert structured.parse_csv(message("Hello, world, again\nand more, text, here")) is None


# --- ADF --------------------------------------------------------------------------------

ADF = """<?xml version="1.0"?><adf><prospect><id source="P">X1</id>
<vendor><contact><name part="full">Dealer Desk</name><email>desk@dealer.example</email>
<phone>614-555-0100</phone></contact></vendor>
<customer><contact><name part="first">Lena</name><name part="last">Ortiz</name>
<!-- <email>hidden@example.com</email> --><phone type="voice">614-555-0166</phone>
</contact><comments><![CDATA[Price < 20k & a test drive?]]></comments></customer>
<provider><name part="full">P</name><email>p@provider.example</email></provider>
</prospect></adf>"""

LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE adf [<!ENTITY a "aaaaaaaaaa">'
    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
    '<adf><prospect><customer><contact><name part="full">&c;</name></contact></customer>'
    "</prospect></adf>"
)
EXTERNAL = (
    '<?xml version="1.0"?><!DOCTYPE adf [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    '<adf><prospect><customer><contact><name part="full">&x;</name></contact></customer>'
    "</prospect></adf>"
)


def test_adf_customer_only() -> None:
    lead = lead_of(message(ADF))
    assert (lead["first_name"], lead["last_name"], lead["phone"]) == (
        "Lena",
        "Ortiz",
        "+16145550166",
    )
    assert lead["email"] is None
    assert lead["source"] == "P" and lead["external_id"] == "X1"
    assert lead["comments"] == "Price < 20k & a test drive?"
    assert lead["appointment_requested"] is True


@pytest.mark.parametrize("xml", [LAUGHS, EXTERNAL], ids=["billion-laughs", "external-entity"])
def test_adf_entities_refused_as_a_problem(xml: str) -> None:
    found = adf.parse(message(xml))
    assert found is not None and not found.pairs
    assert found.problems and "ADF refused" in found.problems[0]
    body = xml + "\n\nName: Ana Silva\nPhone: 614-555-0135\n"
    result = extract_lead(message(body), ctx=CTX, rules=NO_RULES)
    assert result is not None and result.rule == "labels"
    assert any("ADF refused" in p for p in result.problems)


def test_adf_in_xml_attachment_bytes_with_bom() -> None:
    data = b"\xef\xbb\xbf" + ADF.encode("utf-8")
    msg = message(
        "see attachment",
        parts=(
            Part("text/plain", None, b"see attachment", "see attachment"),
            Part("application/octet-stream", "lead.xml", data, None),
        ),
    )
    assert lead_of(msg)["last_name"] == "Ortiz"


# --- rules ------------------------------------------------------------------------------


def write(tmp: Path, name: str, text: str) -> Path:
    folder = tmp / "rules"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_shipped_rules_load() -> None:
    ruleset = load_rules(default_rules_dir())
    assert {r.name for r in ruleset.rules} >= {"homepromatch", "renolink", "sunpath"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("match: {from: '(['}\n", "rules/bad.yaml: match.from: invalid regex"),
        ("match: {}\n", "rules/bad.yaml: match: give at least one of"),
        ("match: {from: x}\nlabels: {Foo: shoe_size}\n", "rules/bad.yaml: labels: unknown field"),
        ("match: {from: x}\nfixed: {appointment_at: now}\n", "rules/bad.yaml: fixed: cannot fix"),
        ("match: {from: x}\ncode: print(1)\n", "rules/bad.yaml: code: Extra inputs"),
        ("match: {from: x}\nparser: magic\n", "rules/bad.yaml: parser: Input should be"),
        (
            "match: {from: x}\ntransforms: {email: [{case: upper, strip_prefix: a}]}\n",
            "rules/bad.yaml: transforms.email.0: each transform step has exactly one",
        ),
        ("match: [unclosed\n", "rules/bad.yaml: (file):"),
    ],
)
def test_rule_errors(tmp_path: Path, text: str, expected: str) -> None:
    folder = write(tmp_path, "bad.yaml", text)
    write(tmp_path, "good.yaml", "match: {from: '@ok\\.example$'}\n")
    with pytest.raises(ConfigError) as caught:
        load_rules(folder)
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems


def test_missing_rules_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_rules(tmp_path / "nope")


def test_rule_labels_fixed_and_transforms(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "acme.yaml",
        """
match: {from: '@acme-leads\\.example$', subject: 'lead', headers: {X-Feed: '^v2$'}}
parser: labels
labels: {Cust ref: external_id, Shade: ignore}
fixed: {source: Acme Leads, location: north}
transforms:
  external_id: [{extract: 'REF-(\\d+)'}, {replace: {pattern: '^', with: 'A-'}}]
  interest: [{strip_suffix: ' (urgent)'}, {case: title}]
""",
    )
    ruleset = load_rules(folder)
    body = "Cust ref: REF-0042\nName: Bo Lind\nPhone: 614-555-0123\nService: roof repair (urgent)\n"
    msg = message(body, sender="feed@acme-leads.example", headers={"x-feed": ["v2"]})
    result = extract_lead(msg, ctx=CTX, rules=ruleset)
    assert result is not None and result.rule == "acme"
    lead = result.lead
    assert (lead["external_id"], lead["source"], lead["location"]) == (
        "A-0042",
        "Acme Leads",
        "north",
    )
    assert lead["interest"] == "Roof Repair"
    other = message(body, sender="feed@acme-leads.example", headers={"x-feed": ["v1"]})
    assert ruleset.match(other) is None


# --- extract_lead ------------------------------------------------------------------------


def test_every_field_present_and_account_set() -> None:
    lead = lead_of(message("Name: Ana Silva\nPhone: 614-555-0135\n"))
    assert list(lead) == list(LEAD_FIELDS)
    assert lead["account"] == "acme"
    assert lead["appointment_requested"] is False


def test_recipient_as_contact_is_not_a_lead() -> None:
    body = "Name: Our Company\nEmail: buyer@roofco.example\nPhone: 614-555-0140\n"
    msg = message(body, to=("buyer@roofco.example", "leads@eleads.example"))
    assert extract_lead(msg, ctx=CTX, rules=NO_RULES) is None


def test_provider_support_address_is_not_the_customer() -> None:
    body = "Name: Ann Lee\nEmail: support@leadco.example\nEmail: ann.lee@example.com\n"
    assert lead_of(message(body, sender="leads@leadco.example"))["email"] == "ann.lee@example.com"


def test_reply_to_fills_a_missing_email() -> None:
    msg = message("Name: Ann Lee\nPhone: 614-555-0135\n", reply_to=("ann.lee@example.com",))
    assert lead_of(msg)["email"] == "ann.lee@example.com"


def test_name_and_postcode_without_contact_is_a_doubtful_lead() -> None:
    result = extract_lead(message("Name: Ann Lee\nZip: 43215\n"), ctx=CTX, rules=NO_RULES)
    assert result is not None and "no email and no phone" in result.problems


@pytest.mark.parametrize(
    "body",
    [
        "Hi Dana, call me at 614-555-0198 or mark@example.com.",
        "Service - service@shop.example\nSales - sales@shop.example",
        "Request a contractor estimate kit: https://shop.example/kit",
    ],
)
def test_prose_is_not_a_lead(body: str) -> None:
    assert extract_lead(message(body), ctx=CTX, rules=NO_RULES) is None


def test_delivery_report_is_never_a_lead() -> None:
    msg = message("Name: Ann Lee\nPhone: 614-555-0135\n", sender="mailer-daemon@mx.example")
    assert extract_lead(msg, ctx=CTX, rules=NO_RULES) is None


def test_a_failing_parser_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(msg: DecodedMessage, **_: Any) -> Found | None:
        raise RuntimeError("bad")

    monkeypatch.setattr(leads, "PARSERS", (("json", boom), *leads.PARSERS))
    result = extract_lead(message("Name: Ann Lee\nPhone: 614-555-0135\n"), ctx=CTX, rules=NO_RULES)
    assert result is not None and "json parser failed: RuntimeError" in result.problems


HOSTILE = {
    "50k name": "Name: " + "A" * 50_000 + "\nPhone: 614-555-0100\n",
    "50k comments": "Phone: 614-555-0100\nComments: " + "come out not " * 5000,
    "50k appointment": "Phone: 614-555-0100\nAppointment: " + "12/12 " * 8000 + "10:00",
    "NUL bytes": "Name: A\x00l B\x00o\nPhone: 614-555-0100\x00\nEmail: al\x00@example.com\n",
    "long spaces": "Name" + " " * 50_000 + "Al Bo\nPhone:" + "\t" * 50_000 + "614-555-0100",
    "deep JSON": "[" * 100_000 + "]" * 100_000,
    "deep XML": "<adf>" + "<prospect>" * 20_000 + "</prospect>" * 20_000 + "</adf>",
    "many lines": "Name: Al Bo\n" * 100_000,
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_bounded(body: str) -> None:
    start = time.perf_counter()
    result = extract_lead(message(body), ctx=CTX, rules=NO_RULES)
    assert time.perf_counter() - start < 2.0
    if result is not None:
        for key, value in result.lead.items():
            if isinstance(value, str):
                assert "\n" not in value and "\x00" not in value, key
                assert len(value) <= normalise.MAX_COMMENTS, key


def test_deep_html_is_bounded() -> None:
    html = "<div>" * 50_000 + "Name: Al Bo<br>Phone: 614-555-0100" + "</div>" * 50_000
    start = time.perf_counter()
    extract_lead(message(html=html), ctx=CTX, rules=NO_RULES)
    assert time.perf_counter() - start < 2.0


def test_label_variants() -> None:
    assert field_for("Phone (mobile)") == "phone"
    assert field_for("Name (First)") == "first_name"
    assert field_for("Preferred Date/Time") == "appointment"
    assert field_for("Visit wanted?") == "appointment"
    assert field_for("Preferred contact time") is None
    assert field_for("Location ID") == "location"


def test_name_with_address_and_two_phones_in_one_value() -> None:
    lead = lead_of(
        message("Name: Ann Lee <ann.lee@example.com>\nPhone: 614-555-0100 / 614-555-0101\n")
    )
    assert (lead["first_name"], lead["last_name"], lead["email"]) == (
        "Ann",
        "Lee",
        "ann.lee@example.com",
    )
    assert (lead["phone"], lead["phone_alt"]) == ("+16145550100", "+16145550101")
    assert lead_of(message("Name: Al Bo\nPhone: 614/555-0100\n"))["phone"] == "+16145550100"


def test_sender_is_the_customer_when_names_agree() -> None:
    msg = message("Name: Ann Lee\nPhone: 614-555-0135\n", sender="ann.lee@example.com")
    assert lead_of(msg)["email"] is None  # no display name: the sender could be a form
    named = DecodedMessage(**{**msg.__dict__, "from_name": "Ann Lee"})
    assert lead_of(named)["email"] == "ann.lee@example.com"


def test_json_vehicle_not_trade_in() -> None:
    body = (
        '{"customer": {"firstName": "Al", "lastName": "Bo", "phone": 6145550100},'
        ' "tradeIn": {"year": 2010, "make": "Ford", "model": "Focus"},'
        ' "vehicle": {"year": 2024, "make": "Kia", "model": "EV9"}}'
    )
    lead = lead_of(message(body))
    assert (lead["interest"], lead["phone"]) == ("2024 Kia EV9", "+16145550100")


def test_adf_with_namespace_and_upper_case_tags() -> None:
    xml = (
        '<ADF xmlns="urn:example:adf"><PROSPECT><CUSTOMER><CONTACT>'
        '<NAME part="full">Al Bo</NAME><PHONE>614-555-0100</PHONE>'
        "</CONTACT></CUSTOMER></PROSPECT></ADF>"
    )
    assert lead_of(message(xml))["last_name"] == "Bo"


def test_rule_parser_that_finds_nothing_falls_back(tmp_path: Path) -> None:
    folder = write(tmp_path, "x.yaml", "match: {from: '@x\\.example$'}\nparser: adf\n")
    msg = message("Name: Al Bo\nPhone: 614-555-0100\n", sender="a@x.example")
    result = extract_lead(msg, ctx=CTX, rules=load_rules(folder))
    assert result is not None and result.rule == "x"
    assert "rule x: parser adf found nothing; labels was used" in result.problems


def test_body_from_line_is_the_customer_only_in_a_form() -> None:
    form = "From: Ann Lee <ann.lee@example.com>\nSubject: Quote\n\nMessage Body:\nNeed a quote.\n"
    lead = lead_of(message(form))
    assert (lead["first_name"], lead["email"]) == ("Ann", "ann.lee@example.com")
    quoted = "From: Ann Lee <ann.lee@example.com>\nSent: Monday\nTo: Bo\nSubject: Re: hi\n"
    assert extract_lead(message(quoted), ctx=CTX, rules=NO_RULES) is None
