"""Bounce messages in the formats members' providers send back, as bytes to APPEND.

Each takes the envelope sender the bounce goes back to (``to``, a VERP address),
the failed recipient and the headers of the message that bounced, and is written
after the real thing each server sends (texts as Postfix, Exim, Exchange, Gmail,
QQ Mail, NetEase 163/126, Tencent exmail and Alibaba mail write them).
"""

from __future__ import annotations

import base64
import hashlib

CRLF = "\r\n"


def _lines(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", CRLF).encode("utf-8")


def _dsn(*, to: str, sender: str, subject: str, human: str, rcpt: str, action: str,
         status: str, diagnostic: str, original: str, mta: str, extra_headers: str = ""
         ) -> bytes:
    return _lines(f"""\
Return-Path: <>
Delivered-To: {to}
From: {sender}
To: {to}
Subject: {subject}
Date: Tue, 24 Nov 2015 09:07:00 +0800
Message-ID: <dsn.{hashlib.sha256((rcpt + subject).encode()).hexdigest()[:12]}@{mta}>
Auto-Submitted: auto-replied
{extra_headers}MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="DSNBOUNDARY"

This is a MIME-encapsulated message.

--DSNBOUNDARY
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

{human}

--DSNBOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; {mta}
Arrival-Date: Tue, 24 Nov 2015 09:00:00 +0800

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.{rcpt.partition("@")[2]}
Diagnostic-Code: smtp; {diagnostic}

--DSNBOUNDARY
Content-Type: text/rfc822-headers

{original}
--DSNBOUNDARY--
""")


def postfix_user_unknown(to: str, rcpt: str, original: str) -> bytes:
    return _dsn(
        to=to, sender="MAILER-DAEMON@mail.example.org (Mail Delivery System)",
        subject="Undelivered Mail Returned to Sender",
        human=("This is the mail system at host mail.example.org.\n\nI'm sorry to have to "
               "inform you that your message could not\nbe delivered to one or more "
               f"recipients.\n\n<{rcpt}>: host mx.example.com[192.0.2.1] said: 550 5.1.1\n"
               f"    <{rcpt}>: Recipient address rejected: User unknown in virtual\n"
               "    mailbox table (in reply to RCPT TO command)"),
        rcpt=rcpt, action="failed", status="5.1.1",
        diagnostic=f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
        original=original, mta="mail.example.org")


def postfix_delayed(to: str, rcpt: str, original: str) -> bytes:
    return _dsn(
        to=to, sender="MAILER-DAEMON@mail.example.org (Mail Delivery System)",
        subject="Delayed Mail (still being retried)",
        human=("This is the mail system at host mail.example.org.\n\n####################"
               "\n# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
               "####################\n\nYour message could not be delivered for more than "
               "4 hour(s).\nIt will be retried until it is 5 day(s) old."),
        rcpt=rcpt, action="delayed", status="4.4.1",
        diagnostic="connect to mx.example.com[192.0.2.1]:25: Connection timed out",
        original=original, mta="mail.example.org")


def exchange_not_found(to: str, rcpt: str, original: str) -> bytes:
    return _dsn(
        to=to, sender="Microsoft Outlook <postmaster@corp.example.com>",
        subject="Undeliverable: 简报 2015年第9期（总第33期）",
        human=("Delivery has failed to these recipients or groups:\n\n"
               f"{rcpt}\nThe email address you entered couldn't be found. Please check the "
               "recipient's email address and try to resend the message."),
        rcpt=rcpt, action="failed", status="5.1.10",
        diagnostic=("smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found "
                    "by SMTP address lookup"),
        original=original, mta="EX01.corp.example.com",
        extra_headers="X-MS-Exchange-Message-Is-Ndr: \n")


def gmail_dmarc(to: str, rcpt: str, original: str) -> bytes:
    return _dsn(
        to=to, sender="Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
        subject="Delivery Status Notification (Failure)",
        human=("** Address not found **\n\nYour message wasn't delivered because of the "
               "recipient's domain policy."),
        rcpt=rcpt, action="failed", status="5.7.26",
        diagnostic=("550-5.7.26 This mail is unauthenticated, which poses a security risk "
                    "to the sender and Gmail users; DMARC policy of the sending domain"),
        original=original, mta="mx.google.com")


def _text_bounce(*, to: str, sender: str, subject: str, body: str, original: str,
                 charset: str = "utf-8") -> bytes:
    encoded = base64.encodebytes(body.replace("\n", CRLF).encode(charset)).decode("ascii")
    return _lines(f"""\
Return-Path: <>
Delivered-To: {to}
From: {sender}
To: {to}
Subject: {subject}
Date: Tue, 24 Nov 2015 09:07:00 +0800
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="TEXTBOUNCE"

--TEXTBOUNCE
Content-Type: text/plain; charset={charset}
Content-Transfer-Encoding: base64

{encoded}
--TEXTBOUNCE
Content-Type: message/rfc822

{original}

(body of the bulletin)
--TEXTBOUNCE--
""")


def exim_mailbox_full(to: str, rcpt: str, original: str) -> bytes:
    body = (f"This message was created automatically by mail delivery software.\n\n"
            "A message that you sent could not be delivered to one or more of its\n"
            "recipients. This is a permanent error. The following address(es) failed:\n\n"
            f"  {rcpt}\n    host mx.example.net [192.0.2.7]\n"
            f"    SMTP error from remote mail server after RCPT TO:<{rcpt}>:\n"
            "    552 5.2.2 Mailbox full: quota exceeded\n")
    return _lines(f"""\
Return-Path: <>
Delivered-To: {to}
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
To: {to}
Subject: Mail delivery failed: returning message to sender
Date: Tue, 24 Nov 2015 09:07:00 +0800
Auto-Submitted: auto-replied
X-Failed-Recipients: {rcpt}
Content-Type: text/plain; charset=utf-8

{body}
------ This is a copy of the message, including all the headers. ------

{original}

(body of the bulletin)
""")


def qq_content_denied(to: str, rcpt: str, original: str) -> bytes:
    body = ("很抱歉您的邮件没有发送成功。\n\n"
            f"收件人：{rcpt}\n"
            "退信原因：550 Mail content denied. "
            "http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000726\n\n"
            "以下是原邮件的信头：\n")
    return _text_bounce(to=to, sender="\"QQ邮箱\" <MAILER-DAEMON@qq.com>", subject="系统退信",
                        body=body, original=original)


def netease_user_not_found(to: str, rcpt: str, original: str) -> bytes:
    body = ("您发送的邮件未能成功投递。\n\n"
            f"收件人：{rcpt}\n"
            f"退信原因：550 User not found: {rcpt}\n"
            "建议：请检查收件人地址是否正确。\n\n"
            "----- 原始邮件 -----\n")
    return _text_bounce(to=to, sender="postmaster@163.com", subject="系统退信 (Delivery failure)",
                        body=body, original=original, charset="gb18030")


def tencent_mailbox_full(to: str, rcpt: str, original: str) -> bytes:
    body = ("很抱歉您的邮件没有发送成功。\n\n"
            f"收件人：{rcpt}\n"
            "退信原因：收件人邮箱空间已满 (550 Mailbox is full)\n\n"
            "原邮件信息：\n")
    return _text_bounce(to=to, sender="\"腾讯企业邮箱\" <postmaster@exmail.qq.com>",
                        subject="退信 (Undelivered)", body=body, original=original)


def alibaba_mailbox_not_found(to: str, rcpt: str, original: str) -> bytes:
    body = ("您好，您发送的邮件无法投递到以下收件人：\n\n"
            f"{rcpt}\n"
            "失败原因：550 Mailbox not found.\n\n"
            "--- 原邮件 ---\n")
    return _text_bounce(to=to, sender="\"阿里邮箱\" <postmaster@mxhichina.com>",
                        subject="投递失败 Undelivered Mail Returned to Sender", body=body,
                        original=original, charset="gb18030")


def auto_reply(to: str, rcpt: str, original: str) -> bytes:
    subject = "=?UTF-8?B?" + base64.b64encode("自动回复: 简报".encode()).decode() + "?="
    return _lines(f"""\
Return-Path: <>
Delivered-To: {to}
From: {rcpt}
To: {to}
Subject: {subject}
Auto-Submitted: auto-replied
Content-Type: text/plain; charset=utf-8

您好，我正在休假，11月30日返回办公室，邮件将于返回后处理。
""")


def arf_complaint(to: str, rcpt: str, original: str) -> bytes:
    return _lines(f"""\
Return-Path: <fbl@feedback.example.com>
Delivered-To: {to}
From: Feedback Loop <fbl@feedback.example.com>
To: {to}
Subject: Complaint about message from 192.0.2.10
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"

--ARF
Content-Type: text/plain; charset=utf-8

This is an email abuse report for an email message received from IP 192.0.2.10.

--ARF
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleFBL/1.0
Version: 1
Original-Rcpt-To: <{rcpt}>

--ARF
Content-Type: message/rfc822

{original}

(body of the bulletin)
--ARF--
""")


def foreign_bounce(to: str) -> bytes:
    """Another sender's bounce that landed in our mailbox (no VERP, no Message-ID)."""
    original = ("From: someone@else.example.net\nTo: x@example.com\n"
                "Message-ID: <123@else.example.net>\nSubject: lunch")
    return postfix_user_unknown(to, "x@example.com", original)


GARBAGE = b"\xff\xfe~~ not mail at all: no headers, no bounce \xa0\xa1\r\n\r\n??\r\n"
