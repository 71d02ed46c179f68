"""decode_message (charsets, transfer encodings, MIME shapes, headers; never raises),
and unwrap_forward on the decoded messages."""

from __future__ import annotations

import base64

from daemon.parse.decode import decode_message, decode_text
from daemon.parse.forwards import unwrap_forward
from daemon.parse.htmltext import html_to_text
from daemon.parse.model import DecodedMessage


def eml(headers: str, body: bytes | str, *, crlf: bool = True) -> bytes:
    raw = headers.strip("\n") + "\n\n"
    data = raw.encode("utf-8") + (body.encode("utf-8") if isinstance(body, str) else body)
    return data.replace(b"\n", b"\r\n") if crlf else data


BASE = "From: Form <form@site.example>\nTo: leads@intake.example\nSubject: Lead\n"


def test_declared_charset_used() -> None:
    msg = decode_message(eml(BASE + 'Content-Type: text/plain; charset="iso-8859-1"', b"Bj\xf6rn"))
    assert msg.text == "Björn"
    assert msg.defects == ()


def test_latin1_label_read_as_cp1252() -> None:
    """Mail labelled ISO-8859-1 often holds cp1252 quotes (0x92): browsers do the same."""
    msg = decode_message(eml(BASE + "Content-Type: text/plain; charset=iso-8859-1", b"We\x92re"))
    assert msg.text == "We\u2019re"


def test_wrong_label_falls_back_to_utf8_then_cp1252() -> None:
    utf8 = decode_message(eml(BASE + "Content-Type: text/plain; charset=us-ascii", "Zoë"))
    assert utf8.text == "Zoë"
    assert any("UTF-8" in d for d in utf8.defects)
    mislabelled = decode_message(eml(BASE + "Content-Type: text/plain; charset=iso-8859-1", "Zoë"))
    assert mislabelled.text == "Zoë"
    cp = decode_message(eml(BASE + "Content-Type: text/plain", b"Mu\xf1oz \x93quoted\x94"))
    assert cp.text == "Muñoz \u201cquoted\u201d"


def test_unknown_charset_label_is_a_defect_not_an_error() -> None:
    msg = decode_message(eml(BASE + "Content-Type: text/plain; charset=x-no-such", "héllo"))
    assert msg.text == "héllo"
    assert any("unknown charset" in d for d in msg.defects)


def test_decode_text_never_fails() -> None:
    assert decode_text(bytes(range(256)), "utf-8")[0]


def test_base64_and_quoted_printable() -> None:
    b64 = base64.b64encode("Petrović".encode()).decode()
    msg = decode_message(
        eml(
            BASE + "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64", b64
        )
    )
    assert msg.text.strip() == "Petrović"
    qp = decode_message(
        eml(
            BASE + "Content-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: quoted-printable",
            "Zo=C3=AB lo=\nng",
        )
    )
    assert qp.text == "Zoë long"


def test_encoded_word_headers_and_8bit_headers() -> None:
    msg = decode_message(
        eml(
            "From: =?utf-8?Q?Jos=C3=A9_Ram=C3=ADrez?= <South@Demo.example>\n"
            "To: a@intake.example\nSubject: =?iso-8859-1?B?R3L832U=?= und mehr\n",
            "x",
        )
    )
    assert msg.from_name == "José Ramírez"
    assert msg.from_addr == "south@demo.example"
    assert msg.subject == "Grüße und mehr"
    raw8 = decode_message(b"From: J\xfcrgen <j@b.example>\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nx")
    assert raw8.from_name == "Jürgen"
    assert raw8.subject == "Grüße"


def test_recipients_from_to_cc_delivered_to_original_to() -> None:
    msg = decode_message(
        eml(
            'From: a@site.example\nTo: "Leads" <Leads@Intake.example>, b@x.example\n'
            "Cc: c@x.example\nDelivered-To: leads+r-abc123@intake.example\n"
            "X-Original-To: orig@intake.example\nReply-To: Customer <Cust@Example.org>\n",
            "x",
        )
    )
    assert msg.to == (
        "leads@intake.example",
        "b@x.example",
        "c@x.example",
        "leads+r-abc123@intake.example",
        "orig@intake.example",
    )
    assert msg.reply_to == ("cust@example.org",)


def test_header_values_never_hold_cr_or_lf() -> None:
    msg = decode_message(
        eml(
            BASE.replace("Subject: Lead\n", "")
            + "Subject: =?utf-8?Q?hi=0D=0ABcc:_x@evil.example?=\n"
            "X-Long: first\n  second\n",
            "x",
        )
    )
    for values in msg.headers.values():
        for value in values:
            assert "\r" not in value and "\n" not in value
    assert msg.header("x-long") == "first second"


def test_message_id_date_and_bare_lf() -> None:
    msg = decode_message(
        eml(
            BASE + "Message-ID: <abc.1@site.example>\nDate: Tue, 17 Nov 2026 07:46:02 -0500\n",
            "body\nline",
            crlf=False,
        )
    )
    assert msg.message_id == "abc.1@site.example"
    assert msg.date is not None and msg.date.year == 2026
    assert msg.text == "body\nline"


def test_html_only_keeps_line_structure_and_label_value_cells() -> None:
    html = (
        "<html><head><style>p{color:red}</style><title>T</title></head><body>"
        "<script>var x = 'Name: Evil';</script>"
        "<p><b>Name:</b> Inés Carvalho<br><b>Tel:</b> 303.555.0171</p>"
        "<table><tr><th>First Name</th><td>Brianna</td></tr>"
        "<tr><td>Email:</td><td><a href='mailto:b@example.com'>b@example.com</a></td></tr>"
        "<tr><td>Zip</td><td>43235</td></tr></table><div>Last&nbsp;line</div></body></html>"
    )
    msg = decode_message(eml(BASE + 'Content-Type: text/html; charset="utf-8"', html))
    assert msg.html == html
    assert msg.text.splitlines() == [
        "Name: Inés Carvalho",
        "Tel: 303.555.0171",
        "First Name: Brianna",
        "Email: b@example.com",
        "Zip\t43235",
        "Last line",
    ]


def test_html_blockquote_lines_are_quoted() -> None:
    html = "<div>Use 1</div><blockquote><div>USE 2</div><pre>a\n\nb</pre></blockquote>"
    text = html_to_text(html)
    assert text.splitlines() == ["Use 1", "> USE 2", "> a", ">", "> b"]


def test_multipart_alternative_prefers_plain_and_keeps_html() -> None:
    body = (
        "--b\nContent-Type: text/plain; charset=utf-8\n\nplain text\n"
        "--b\nContent-Type: text/html; charset=utf-8\n\n<p>html text</p>\n--b--\n"
    )
    msg = decode_message(eml(BASE + 'Content-Type: multipart/alternative; boundary="b"', body))
    assert msg.text.strip() == "plain text"
    assert msg.html is not None and "html text" in msg.html
    assert [p.content_type for p in msg.parts] == ["text/plain", "text/html"]


def test_attachments_xml_json_csv_get_text() -> None:
    xml = base64.b64encode(b"<?xml version='1.0'?><adf><prospect/></adf>").decode()
    body = (
        "--m\nContent-Type: text/plain\n\nsee attached\n"
        "--m\nContent-Type: application/xml; name=lead.xml\nContent-Transfer-Encoding: base64\n"
        f"Content-Disposition: attachment; filename=lead.xml\n\n{xml}\n"
        "--m\nContent-Type: application/octet-stream; name=data.csv\n"
        'Content-Disposition: attachment; filename="data.csv"\n\nname,phone\nA,1\n'
        "--m\nContent-Type: image/png; name=x.png\nContent-Transfer-Encoding: base64\n\n"
        "iVBORw0KGgo=\n"
        "--m--\n"
    )
    msg = decode_message(eml(BASE + 'Content-Type: multipart/mixed; boundary="m"', body))
    assert msg.text.strip() == "see attached"
    by_name = {p.filename: p for p in msg.parts}
    assert by_name["lead.xml"].text is not None and "<adf>" in by_name["lead.xml"].text
    assert by_name["data.csv"].text is not None and "name,phone" in by_name["data.csv"].text
    assert by_name["x.png"].text is None and by_name["x.png"].data.startswith(b"\x89PNG")


def test_text_xml_body_becomes_text() -> None:
    msg = decode_message(eml(BASE + "Content-Type: text/xml; charset=utf-8", "<adf></adf>"))
    assert msg.text == "<adf></adf>"


def test_message_rfc822_is_decoded_recursively() -> None:
    inner = (
        "From: Provider <adf@provider.example>\nSubject: Inner lead\n"
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        + base64.b64encode("Renée".encode()).decode()
        + "\n"
    )
    body = (
        "--f\nContent-Type: text/plain\n\nFYI\n--f\nContent-Type: message/rfc822\n\n"
        + inner
        + "--f--\n"
    )
    msg = decode_message(eml(BASE + 'Content-Type: multipart/mixed; boundary="f"', body))
    assert msg.text.strip() == "FYI"
    assert len(msg.attached_messages) == 1
    attached = msg.attached_messages[0]
    assert attached.from_addr == "adf@provider.example"
    assert attached.subject == "Inner lead"
    assert attached.text.strip() == "Renée"


def test_nesting_deeper_than_limit_is_a_defect() -> None:
    head, tail = "", ""
    for i in range(60):
        head += f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n'
        tail = f"\n--b{i}--\n" + tail
    msg = decode_message(eml(BASE + head.rstrip("\n"), "Content-Type: text/plain\n\nhi" + tail))
    assert any("nesting deeper" in d for d in msg.defects)


def test_nul_bytes_and_huge_header() -> None:
    raw = b"From: a@b.example\r\nSubject: " + b"S" * 50_000 + b"\x00\r\n\r\nbo\x00dy"
    msg = decode_message(raw)
    assert msg.text == "body"
    assert len(msg.subject) == 8192
    assert "NUL bytes removed" in msg.defects
    assert any("truncated" in d for d in msg.defects)


def test_garbage_and_empty_input_never_raise() -> None:
    odd = (b"", b"\xff\xfe\x00garbage", b"\r\n\r\n", b"Content-Type: multipart/mixed\r\n\r\n--")
    for raw in odd:
        msg = decode_message(raw)
        assert isinstance(msg.text, str)


# --- forwards: unwrap_forward works on decoded messages (kept here with the decoder) -----

FWD = "From: Owner <owner@biz.example>\nTo: leads@intake.example\nSubject: Fwd: Lead\n"


def unwrap(raw: bytes) -> DecodedMessage:
    return unwrap_forward(decode_message(raw))


def test_apple_mail_plain_forward() -> None:
    body = (
        "See below\n\nOwner\n614-555-0100\n\nBegin forwarded message:\n\n"
        "From: Provider <p@provider.example>\nSubject: New lead 42\n"
        "Date: November 17, 2026 at 7:45:00 AM EST\nTo: owner@biz.example\n\n"
        "Name: Pat Doe\nPhone: 614-555-0199\n"
    )
    original = unwrap(eml(FWD, body))
    assert original.from_addr == "p@provider.example"
    assert original.from_name == "Provider"
    assert original.subject == "New lead 42"
    assert original.date is not None and (original.date.month, original.date.hour) == (11, 7)
    assert original.to == ("owner@biz.example",)
    assert original.text == "Name: Pat Doe\nPhone: 614-555-0199"
    assert "614-555-0100" not in original.text


def test_apple_mail_html_blockquote_forward() -> None:
    html = (
        "<div>FYI</div><div>Begin forwarded message:</div><br><blockquote type='cite'>"
        "<div><b>From: </b>Provider &lt;p@provider.example&gt;</div>"
        "<div><b>Subject: </b>New lead 42</div><div><b>Date: </b>17 Nov 2026 07:45</div>"
        "<br><div>Name: Pat Doe</div><div>Email: pat@example.org</div></blockquote>"
    )
    original = unwrap(eml(FWD + "Content-Type: text/html; charset=utf-8", html))
    assert original.from_addr == "p@provider.example"
    assert original.text.splitlines() == ["Name: Pat Doe", "Email: pat@example.org"]


def test_thunderbird_forward_and_outlook_mailto_from() -> None:
    body = (
        "-------- Forwarded Message --------\nSubject: Lead\n"
        "Date: Tue, 17 Nov 2026 07:45:00 -0500\n"
        "From: Provider [mailto:P@Provider.example]\nTo: a@biz.example, b@biz.example\n\n"
        "Name: Pat\n"
    )
    original = unwrap(eml(FWD, body))
    assert original.from_addr == "p@provider.example"
    assert original.to == ("a@biz.example", "b@biz.example")
    assert original.text == "Name: Pat"


def test_forward_of_a_forward_is_unwrapped_twice() -> None:
    body = (
        "please add\n\n---------- Forwarded message ---------\n"
        "From: Mike <mike@biz.example>\nDate: Tue, Nov 17, 2026 at 8:02 AM\n"
        "Subject: FW: Lead\nTo: <owner@biz.example>\n\n\nMike's note\n\n"
        "-----Original Message-----\nFrom: ProjectPair <leads@pp.example>\n"
        "Sent: Tuesday, November 17, 2026 7:45 AM\nTo: mike@biz.example\n"
        "Subject: New Lead\n\nCustomer: Angela Ruiz\n"
    )
    original = unwrap(eml(FWD, body))
    assert original.from_addr == "leads@pp.example"
    assert original.subject == "New Lead"
    assert original.text == "Customer: Angela Ruiz"


def test_attached_forward_nested_twice() -> None:
    inner = "From: Provider <p@provider.example>\nSubject: Lead 7\n\nName: Pat\n"
    middle = (
        "From: Mike <mike@biz.example>\nSubject: Fwd: Lead 7\n"
        'Content-Type: multipart/mixed; boundary="in"\n\n--in\nContent-Type: text/plain\n\n'
        "fyi\n--in\nContent-Type: message/rfc822\n\n" + inner + "--in--\n"
    )
    body = (
        "--out\nContent-Type: text/plain\n\nsee attached\n--out\n"
        "Content-Type: message/rfc822\n\n" + middle + "--out--\n"
    )
    original = unwrap(eml(FWD + 'Content-Type: multipart/mixed; boundary="out"', body))
    assert original.from_addr == "p@provider.example"
    assert original.text.strip() == "Name: Pat"


def test_form_with_from_and_subject_lines_is_not_a_forward() -> None:
    body = (
        "From: Karen Hollister <karen@example.com>\nSubject: New message\n\nName: Karen Hollister\n"
    )
    msg = decode_message(eml(BASE, body))
    assert unwrap_forward(msg) is msg
