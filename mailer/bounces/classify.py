"""What came back: a DSN, a provider's own bounce text, a complaint, or no failure at all.

Order of reading, most authoritative first:

1. an ARF report (``multipart/report; report-type=feedback-report``): a complaint;
2. an RFC 3464 DSN: its per-recipient ``Action``/``Status``/``Diagnostic-Code``;
   ``delayed`` (and ``delivered``/``relayed``) are not failures;
3. an auto-reply (RFC 3834 ``Auto-Submitted``, ``X-Autoreply``, 自动回复 subjects) that
   is not a bounce notice: not a failure;
4. a non-standard bounce text (Exim, QQ Mail, NetEase, Tencent, Alibaba, ...):
   flufl.bounce names the failed addresses, our rules read the reply text.

The kind comes from the enhanced status code where it is specific (5.1.x hard,
5.7.x policy, 4.x.x and 5.2.2 soft), else from the reply text, with rules for the
texts of the Chinese providers members use (Sisimai's reading of Tencent and
NetEase replies is the reference). Policy refusals (spam, content denied,
SPF/DMARC) are a sending problem, never blamed on the member.

Only the explanation is read, never the returned copy of our bulletin: the
bulletin's own words ("spam", 退信 in an article) must not decide anything.
"""

from __future__ import annotations

import email.header
import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message

from flufl.bounce import all_failures


class Kind(enum.StrEnum):
    HARD = "hard"  # no such user, domain gone: stop at once
    SOFT = "soft"  # mailbox full, temporary: score
    POLICY = "policy"  # spam block, content denied, SPF/DMARC: a sending problem
    COMPLAINT = "complaint"  # ARF: the member marked it as spam
    DELAYED = "delayed"  # still being tried: not a failure
    NOTICE = "notice"  # delivered/relayed DSN: not a failure
    AUTOREPLY = "autoreply"  # vacation, 自动回复: not a failure
    UNREADABLE = "unreadable"  # not understood: left for staff

    @property
    def is_failure(self) -> bool:
        return self in (Kind.HARD, Kind.SOFT, Kind.POLICY)


@dataclass(frozen=True)
class Reading:
    kind: Kind
    status: str | None  # the enhanced status code, "5.1.1"
    text: str  # the reply or explanation, one line, at most 300 characters
    recipients: tuple[str, ...] = ()  # addresses the report names (lower case)


_POLICY = re.compile(
    r"spam|junk|content (?:was )?(?:denied|rejected)|content denied|DT:SPM|MI:SPF|"
    r"\bSPF\b|DMARC|DKIM|black ?list|block ?list|blocked|listed (?:in|at|on)|reputation|"
    r"\bpolicy\b|RP:(?:TRC|CEL|QRC|DBL|RDN)|frequency limit|rate limit|too many|"
    r"垃圾邮件|拒收|被退回.*内容|内容.*(?:违规|拒绝)|发送频率", re.IGNORECASE)
_HARD = re.compile(
    r"user (?:unknown|not found|doesn'?t exist|does not exist)|unknown (?:user|recipient)|"
    r"no such (?:user|recipient|mailbox|address|account)|"
    r"mailbox (?:not found|unavailable|does not exist|doesn'?t exist|is not exist)|"
    r"recipient (?:address )?rejected|invalid (?:recipient|mailbox|address|user)|"
    r"address rejected|not our customer|account (?:has been )?(?:disabled|deleted|removed)|"
    r"(?:account|address|user|mailbox|recipient) (?:does not|doesn'?t) exist|"
    r"host (?:or domain name )?not found|domain (?:not found|does not exist)|"
    r"name service error|NXDOMAIN|no mx|"
    r"用户不存在|收件人不存在|邮箱不存在|地址不存在|帐号不存在|账号不存在|账户不存在|查无此人",
    re.IGNORECASE)
_SOFT = re.compile(
    r"mailbox (?:is )?full|quota|insufficient (?:storage|space)|storage limit|"
    r"exceed(?:ed|s)? .*(?:storage|size limit of the mailbox)|temporar|try again|greylist|"
    r"deferred|timed? ?out|suspended|inactive|user is locked|"
    r"空间(?:已满|不足)|邮箱(?:已满|满了|容量)|容量不足|冻结|暂时", re.IGNORECASE)
_AUTOREPLY_SUBJECT = re.compile(
    r"自动回复|自動回覆|自动答复|auto[ -]?reply|auto[ -]?response|automatic reply|"
    r"out of (?:the )?office|vacation|休假|不在办公室|外出", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|failure|has failed)|failure notice|"
    r"mail delivery failed|returned mail|returned to sender|could not be delivered|"
    r"退信|投递失败|未能送达|无法投递|发送失败|系统退信", re.IGNORECASE)
_BOUNCE_FROM = re.compile(r"mailer-daemon|postmaster|mail delivery", re.IGNORECASE)
# The explanation of a non-DSN bounce ends where the returned message begins.
_COPY_MARKERS = re.compile(
    r"^.*(?:this is a copy of the message|original message|returned message|"
    r"message headers follow|below this line is a copy|以下是原邮件|原邮件|原始邮件).*$",
    re.IGNORECASE | re.MULTILINE)
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_LINE = re.compile(r"^.*\b[45]\d\d\b.*$", re.MULTILINE)


def decoded_header(msg: Message, name: str) -> str:
    """A header's text, RFC 2047 words decoded; "" when absent or broken."""
    value = msg.get(name)
    if value is None:
        return ""
    try:
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except (UnicodeError, LookupError, email.errors.HeaderParseError):
        return str(value)


def part_text(part: Message) -> str:
    """A text part's content as str (its charset, else GB18030, else replacement)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    for cs in (charset, "gb18030"):
        try:
            return payload.decode(cs)
        except (UnicodeDecodeError, LookupError):
            continue
    return payload.decode("utf-8", "replace")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _kind_of(status: str | None, text: str) -> Kind | None:
    if _POLICY.search(text):
        return Kind.POLICY
    if status is not None and not status.endswith(".0.0"):
        klass, subject, _ = status.split(".")
        if klass == "4":
            return Kind.SOFT
        if subject == "1":
            return Kind.HARD
        if subject == "7":
            return Kind.POLICY
        if status in ("5.2.2", "5.2.1", "5.2.0"):
            return Kind.SOFT
        if status in ("5.4.4", "5.4.0"):
            return Kind.HARD
    if _HARD.search(text):
        return Kind.HARD
    if _SOFT.search(text):
        return Kind.SOFT
    if status is not None:
        return Kind.SOFT if status.startswith("4") else Kind.HARD
    return None


def _report_type(msg: Message) -> str:
    if msg.get_content_type() != "multipart/report":
        return ""
    return str(msg.get_param("report-type", "") or "").lower()


def _feedback(msg: Message) -> Reading:
    fields: list[str] = []
    recipients: list[str] = []
    for part in msg.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        body = part.get_payload()
        blocks = [b for b in body if isinstance(b, Message)] if isinstance(body, list) else []
        text = "\n".join(f"{k}: {v}" for b in blocks for k, v in b.items()) if blocks \
            else part_text(part)
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "feedback-type":
                fields.append(value.strip())
            if key.strip().lower() == "original-rcpt-to":
                recipients.append(value.strip().strip("<>").lower())
    kind = fields[0] if fields else "abuse"
    return Reading(Kind.COMPLAINT, None, f"complaint ({kind})", tuple(recipients))


def _dsn(msg: Message) -> Reading | None:
    failed: list[tuple[str | None, str, str]] = []
    delayed = False
    other = False
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            continue
        for block in blocks:
            if not isinstance(block, Message):
                continue
            action = str(block.get("Action", "")).strip().lower()
            if not action:
                continue  # the per-message block
            status_m = _STATUS.search(str(block.get("Status", "")))
            status = ".".join(status_m.groups()) if status_m else None
            diagnostic = _one_line(str(block.get("Diagnostic-Code", "")).partition(";")[2]
                                   or str(block.get("Diagnostic-Code", "")))
            recipient = str(block.get("Final-Recipient") or block.get("Original-Recipient")
                            or "").partition(";")[2].strip().strip("<>").lower()
            if action == "failed":
                failed.append((status, diagnostic, recipient))
            elif action == "delayed":
                delayed = True
            else:
                other = True
    if failed:
        status, diagnostic, _ = failed[0]
        kind = _kind_of(status, diagnostic) or Kind.HARD
        text = diagnostic or (f"status {status}" if status else "failed")
        return Reading(kind, status, text, tuple(r for _, _, r in failed if r))
    if delayed:
        return Reading(Kind.DELAYED, None, "delivery delayed; the relay is still trying")
    if other:
        return Reading(Kind.NOTICE, None, "delivery notice (not a failure)")
    return None


def _explanation(msg: Message) -> str:
    """The bounce's own words: text parts outside any returned message, cut where a
    quoted copy of the original begins."""
    out: list[str] = []
    for part in _own_parts(msg):
        if part.get_content_maintype() != "text" or part.get_content_type() == \
                "text/rfc822-headers":
            continue
        text = part_text(part)
        if part.get_content_type() == "text/html":
            text = re.sub(r"<[^>]+>", " ", text)
        m = _COPY_MARKERS.search(text)
        out.append(text[: m.start()] if m else text)
    return "\n".join(out)


def _own_parts(msg: Message) -> Iterator[Message]:
    """The parts of ``msg`` that are not inside an attached message."""
    if msg.get_content_type() == "message/rfc822":
        return
    if msg.is_multipart():
        for sub in msg.get_payload():
            if isinstance(sub, Message):
                yield from _own_parts(sub)
    else:
        yield msg


def _is_autoreply(msg: Message) -> bool:
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    flagged = (auto.startswith("auto-replied") or msg.get("X-Autoreply") is not None
               or msg.get("X-Autorespond") is not None
               or str(msg.get("Precedence", "")).strip().lower() == "auto_reply")
    subject = decoded_header(msg, "Subject")
    if _BOUNCE_SUBJECT.search(subject) or _BOUNCE_FROM.search(decoded_header(msg, "From")):
        return False  # a bounce notice (Postfix marks those auto-replied too)
    return flagged or bool(_AUTOREPLY_SUBJECT.search(subject))


def classify(msg: Message) -> Reading:
    """Read one message from the bounce mailbox."""
    report = _report_type(msg)
    if report == "feedback-report" or any(
            p.get_content_type() == "message/feedback-report" for p in msg.walk()):
        return _feedback(msg)
    dsn = _dsn(msg)
    if dsn is not None:
        return dsn
    if _is_autoreply(msg):
        return Reading(Kind.AUTOREPLY, None, _one_line(decoded_header(msg, "Subject"))
                       or "auto-reply")
    try:
        # flufl's heuristic detectors assume a From header (and log a traceback
        # without one); a message without it is no bounce they could read.
        temporary, permanent = all_failures(msg) if msg.get("From") else (frozenset(),
                                                                          frozenset())
    except Exception:  # a detector choking on odd input: our own rules still read it
        temporary, permanent = frozenset(), frozenset()
    recipients = tuple(sorted(a.decode("ascii", "replace").lower()
                              for a in (*permanent, *temporary)))
    explanation = _explanation(msg)
    looks_like_bounce = bool(recipients) or bool(
        _BOUNCE_SUBJECT.search(decoded_header(msg, "Subject"))
        or _BOUNCE_FROM.search(decoded_header(msg, "From")))
    if not looks_like_bounce:
        return Reading(Kind.UNREADABLE, None, "not a bounce, a complaint or an auto-reply")
    status_m = _STATUS.search(explanation)
    status = ".".join(status_m.groups()) if status_m and status_m.group(1) != "2" else None
    kind = _kind_of(status, explanation)
    if kind is None:
        if permanent:
            kind = Kind.HARD
        elif temporary:
            kind = Kind.SOFT
        else:
            return Reading(Kind.UNREADABLE, None, "a bounce notice whose reason is not "
                                                  "understood", recipients)
    reply = _REPLY_LINE.search(explanation)
    text = _one_line(reply.group(0) if reply else explanation) or kind.value
    return Reading(kind, status, text, recipients)
