"""``email.send``: mail over SMTP from the worker.

The server comes from ``QLITE_SMTP_URL`` (read when a job runs, never logged):

- ``smtp://user:password@host:587``: STARTTLS, required (the server must offer it);
- ``smtps://user:password@host:465``: TLS from the first byte;
- ``smtp://host:25?tls=off``: no TLS, for a relay on the same host or network (and tests).

The sender is ``sender=`` or ``QLITE_SMTP_FROM``. Transient failures (connection, a 4xx
reply) raise, so the job is retried with back-off; a permanent one (a 5xx reply, refused
credentials, a malformed argument) fails the job at once. A control character (CR, LF, NUL,
ESC, U+2028, ...) in any header field or attachment filename is refused before anything is
sent, also when it hides in an RFC 2047 encoded word (``=?utf-8?q?=0D=0A?=``): Python 3.11's
email package decodes those and writes the CR/LF (the CVE-2024-6923 class). At most
``MAX_RECIPIENTS`` recipients per message.
"""

from __future__ import annotations

import base64
import os
import re
import smtplib
import ssl
import tempfile
import unicodedata
import uuid
from email.header import decode_header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from qlite.errors import Fail

MAX_RECIPIENTS = 100  # to + cc + bcc of one message: a bulk send is one job per recipient
ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[^?\s]*\?[^?\s]*\?=")
# The addr-spec itself: printable ASCII without spaces or specials (no encoded words, no
# UTF-8 mailbox names: smtplib would refuse them on every attempt).
ADDR_SPEC = re.compile(r"[A-Za-z0-9!#$%&'*+/^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}")


def _control(text: str) -> str | None:
    """The first control character (Cc) or line/paragraph separator in ``text``, if any:
    each can end a header line in some reader."""
    return next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)


def _one_line(field: str, value: Any) -> str:
    """``value`` if it is a string that stays one header line, also once its RFC 2047 encoded
    words are decoded; else Fail (permanent: the same argument fails on every attempt)."""
    if not isinstance(value, str):
        raise Fail(f"{field}: expected a string (got {type(value).__name__})")
    bad = _control(value)
    where = ""
    if bad is None:
        for word in ENCODED_WORD.findall(value):
            try:
                parts = decode_header(word)
            except Exception:
                raise Fail(f"{field}: malformed RFC 2047 encoded word {word[:80]!r}. Try: plain "
                           "text (qlite encodes non-ASCII itself)") from None
            for data, charset in parts:
                text = data if isinstance(data, str) else _decode(data, charset)
                bad = bad or _control(text)
            if bad is not None:
                where = f" (in the encoded word {word[:80]!r})"
                break
    if bad is not None:
        raise Fail(f"{field}: control character {bad!r} in a header field{where}: CR, LF, NUL "
                   "and other control characters are refused (header injection refused)")
    return value


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "ascii", "replace")
    except LookupError:  # an unknown charset: every byte as a character, none hidden
        return data.decode("latin-1")


def _addresses(field: str, value: Any) -> list[str]:
    if value is not None and not isinstance(value, str | list):
        raise Fail(f"{field}: expected an address or a list of addresses "
                   f"(got {type(value).__name__})")
    items = [value] if isinstance(value, str) else list(value or [])
    if len(items) > MAX_RECIPIENTS:
        raise Fail(f"{field}: {len(items)} addresses, over the limit of {MAX_RECIPIENTS} "
                   "recipients per message. Try: one email.send job per recipient")
    out = []
    for item in items:
        address = _one_line(field, item)
        if not ADDR_SPEC.fullmatch(parseaddr(address)[1]):
            raise Fail(f"{field}: {address[:120]!r} is not an email address such as "
                       "'Name <user@example.com>' (ASCII user@domain, no encoded words)")
        out.append(address)
    return out


def smtp_settings(url: str | None = None) -> dict:
    url = os.environ.get("QLITE_SMTP_URL") if url is None else url
    if not url:
        raise Fail("QLITE_SMTP_URL is not set on the worker. Try: "
                   "QLITE_SMTP_URL=smtp://user:password@smtp.example.com:587")
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise Fail("QLITE_SMTP_URL: expected smtp://[user:password@]host[:port] or smtps://... "
                   f"(got scheme {parts.scheme!r})")  # never echo the URL: it holds a password
    tls = parse_qs(parts.query).get("tls", ["on"])[0]
    if tls not in ("on", "off"):
        raise Fail(f"QLITE_SMTP_URL: tls= expects on or off (got {tls!r})")
    return {"implicit_tls": parts.scheme == "smtps", "starttls": parts.scheme == "smtp" and
            tls == "on", "host": parts.hostname,
            "port": parts.port or (465 if parts.scheme == "smtps" else 587),
            "user": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None}


def build(to: Any, subject: str, text: str | None = None, html: str | None = None,
          cc: Any = None, bcc: Any = None, reply_to: str | None = None,
          sender: str | None = None) -> tuple[EmailMessage, list[str]]:
    """The message and its envelope recipients, every header field checked."""
    sender = sender or os.environ.get("QLITE_SMTP_FROM")
    if not sender:
        raise Fail("sender: not given and QLITE_SMTP_FROM is not set on the worker")
    sender = _addresses("sender", sender)[0]
    to_list, cc_list, bcc_list = (_addresses("to", to), _addresses("cc", cc),
                                  _addresses("bcc", bcc))
    if not to_list + cc_list + bcc_list:
        raise Fail("to: expected at least one recipient")
    if len(to_list + cc_list + bcc_list) > MAX_RECIPIENTS:
        raise Fail(f"to, cc, bcc: {len(to_list + cc_list + bcc_list)} recipients, over the "
                   f"limit of {MAX_RECIPIENTS} per message. Try: one email.send job per "
                   "recipient")
    if text is None and html is None:
        raise Fail("give text=, html= or both")
    for name, value in (("text", text), ("html", html)):
        if value is not None and not isinstance(value, str):
            raise Fail(f"{name}: expected a string (got {type(value).__name__})")
    msg = EmailMessage()
    msg["From"] = sender
    if to_list:
        msg["To"] = ", ".join(to_list)
    if cc_list:
        msg["Cc"] = ", ".join(cc_list)
    if reply_to is not None:
        msg["Reply-To"] = _addresses("reply_to", reply_to)[0]
    msg["Subject"] = _one_line("subject", subject)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].strip("> ") or None)
    msg.set_content(text if text is not None else "This message is HTML only.")
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg, [parseaddr(a)[1] for a in to_list + cc_list + bcc_list]


def _attachments(items: Any) -> list[dict]:
    """Validated attachments: ``{"key": K, "filename": F, "content_type": T}``; K is under
    ``uploads/`` (a producer must not mail itself the bucket's other objects)."""
    from qlite.tasks.upload import _key

    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(a, dict) for a in items):
        raise Fail("attachments: expected a list of {key, filename, content_type} objects")
    out = []
    for a in items:
        key = _key("attachments.key", a.get("key"))
        name = _one_line("attachments.filename", a.get("filename") or key.rsplit("/", 1)[-1])
        kind = _one_line("attachments.content_type",
                         a.get("content_type") or "application/octet-stream")
        if not re.fullmatch(r"[\w.+-]+/[\w.+-]+", kind):
            raise Fail(f"attachments.content_type: expected type/subtype (got {kind!r:.80})")
        out.append({"key": key, "filename": name, "content_type": kind})
    return out


def _spool(msg: EmailMessage, attachments: list[dict], store: Any) -> Any:
    """The whole message, CRLF line endings, in a temporary file (memory up to 1 MiB, then
    disk): each attachment streams from the bucket through base64 in 57 KiB reads, so a
    large one is never held whole in memory."""
    placeholders: list[bytes] = []
    for i, a in enumerate(attachments):
        mark = f"QLITEATTACHMENT{i}X{uuid.uuid4().hex}"
        placeholders.append(mark.encode())
        maintype, subtype = a["content_type"].split("/", 1)
        msg.add_attachment(b"", maintype=maintype, subtype=subtype, filename=a["filename"])
        part: Any = msg.get_payload()[-1]  # type: ignore[index]
        part.set_payload(mark)  # stays base64-declared; replaced by the stream below
    out = tempfile.SpooledTemporaryFile(max_size=1 << 20)
    rendered = msg.as_bytes(policy=SMTP)
    for i, placeholder in enumerate(placeholders):
        head, rendered = rendered.split(placeholder, 1)
        out.write(head)
        _base64_into(out, store.stream(attachments[i]["key"]))
    out.write(rendered)
    out.seek(0)
    return out


def _base64_into(out: Any, body: Any) -> None:
    line = 57  # bytes per 76-character base64 line
    rest = b""
    while True:
        data = body.read(line * 1024)
        if not data:
            break
        data, cut = rest + data, (len(rest + data) // line) * line
        data, rest = data[:cut], data[cut:]
        out.write(base64.encodebytes(data).replace(b"\n", b"\r\n"))
    if rest:
        out.write(base64.encodebytes(rest).replace(b"\n", b"\r\n"))


def _transmit(smtp: smtplib.SMTP, sender: str, recipients: list[str], message: Any) -> dict:
    """MAIL, RCPT and a streamed DATA (dot-stuffed line by line): smtplib's send_message
    needs the message whole in memory."""
    code, reply = smtp.mail(sender, ["BODY=8BITMIME"] if smtp.has_extn("8bitmime") else [])
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, reply, sender)
    refused = {}
    for r in recipients:
        code, reply = smtp.rcpt(r)
        if code not in (250, 251):
            refused[r] = (code, reply)
    if len(refused) == len(recipients):
        smtp.rset()
        raise smtplib.SMTPRecipientsRefused(refused)
    code, reply = smtp.docmd("data")
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    line = b"\r\n"
    for line in message:
        smtp.send(b"." + line if line.startswith(b".") else line)
    smtp.send(b".\r\n" if line.endswith(b"\r\n") else b"\r\n.\r\n")
    code, reply = smtp.getreply()
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)
    return refused


def send(ctx: Any, to: Any, subject: str, text: str | None = None, html: str | None = None,
         cc: Any = None, bcc: Any = None, reply_to: str | None = None,
         sender: str | None = None, attachments: list | None = None,
         timeout: float = 30.0) -> dict:
    msg, recipients = build(to, subject, text, html, cc, bcc, reply_to, sender)
    files = _attachments(attachments)
    # The same Message-ID on every attempt lets a receiving system drop a repeat.
    msg.replace_header("Message-ID", f"<{ctx.job_id}@qlite>")
    conf = smtp_settings()
    message = _spool(msg, files, ctx.client.store)
    context = ssl.create_default_context()
    cls: Any = smtplib.SMTP_SSL if conf["implicit_tls"] else smtplib.SMTP
    kwargs: dict[str, Any] = {"context": context} if conf["implicit_tls"] else {}
    try:
        with cls(conf["host"], conf["port"], timeout=timeout, **kwargs) as smtp:
            smtp.ehlo()
            if conf["starttls"]:
                if not smtp.has_extn("starttls"):
                    raise Fail(f"{conf['host']} does not offer STARTTLS. Try: smtps:// or, "
                               "for a local relay, ?tls=off")
                smtp.starttls(context=context)
                smtp.ehlo()
            if conf["user"]:
                _login(smtp, conf["user"], conf["password"] or "")
            refused = _transmit(smtp, parseaddr(msg["From"])[1], recipients, message)
    except smtplib.SMTPRecipientsRefused as e:
        codes = {addr: code for addr, (code, _) in e.recipients.items()}
        if all(code >= 500 for code in codes.values()):
            raise Fail(f"every recipient was refused: {_replies(e.recipients)}") from None
        raise
    except smtplib.SMTPResponseException as e:
        if e.smtp_code >= 500:
            raise Fail(f"SMTP server refused: {e.smtp_code} {_text(e.smtp_error)}") from None
        raise  # 4xx: transient, retried
    finally:
        message.close()
    return {"message_id": msg["Message-ID"], "accepted": [r for r in recipients
                                                          if r not in refused],
            "refused": _replies(refused)}


def _login(smtp: smtplib.SMTP, user: str, password: str) -> None:
    """AUTH with one mechanism, PLAIN or LOGIN: smtplib's login() falls through every
    mechanism after a refusal, and some servers then wait for input that never comes."""
    offered = smtp.esmtp_features.get("auth", "").upper().split()
    mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
    if mechanism is None:
        raise Fail(f"the SMTP server offers no PLAIN or LOGIN authentication "
                   f"(offers: {' '.join(offered) or 'none'})")
    smtp.user, smtp.password = user, password
    smtp.auth(mechanism, getattr(smtp, f"auth_{mechanism.lower()}"))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _replies(refused: dict) -> dict:
    return {addr: f"{code} {_text(msg)}" for addr, (code, msg) in refused.items()}
