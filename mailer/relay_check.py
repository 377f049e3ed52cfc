"""`mailer doctor`'s look at the relay, one step at a time, as sending would use it.

The sender's own session setup (``transport._open``) does connect, STARTTLS and
AUTH in one call and reports the first error; here each step is its own finding,
so staff see how far it got: connect, EHLO, STARTTLS, AUTH offered, AUTH accepted,
and whether the relay takes mail from ``sender.address``. Nothing is sent: the
session ends with RSET and QUIT after MAIL FROM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiosmtplib

from .config import ENV_PASSWORD, Config, is_loopback
from .doctor import Finding, fail, ok, warn

CHECK = "relay"


async def _relay(config: Config) -> list[Finding]:
    s = config.smtp
    where = f"{s.host}:{s.port}"
    smtp = aiosmtplib.SMTP(hostname=s.host, port=s.port, timeout=s.timeout,
                           use_tls=s.tls == "tls", start_tls=False)
    out: list[Finding] = []
    try:
        try:
            await smtp.connect()
            await smtp.ehlo()
        except aiosmtplib.SMTPResponseException as e:
            return [fail(CHECK, f"{where} answered {e.code} {e.message} at connect/EHLO; "
                                "check [smtp] host and port with your provider")]
        except (aiosmtplib.SMTPException, OSError) as e:
            if isinstance(e, ssl.SSLError) or isinstance(e.__cause__, ssl.SSLError):
                return [fail(CHECK, f"TLS with {where} failed ({e.__cause__ or e}): port "
                                    "465 takes tls = \"tls\", 587 takes \"starttls\"")]
            return [fail(CHECK, f"cannot connect to {where} ({e}); check [smtp] host and "
                                "port (587 for starttls, 465 for tls)")]
        out.append(ok(CHECK, f"{where} answered EHLO"))
        offers_tls = smtp.supports_extension("starttls")
        if s.tls == "starttls":
            if not offers_tls:
                return [*out, fail(CHECK, f"{where} does not offer STARTTLS: use tls = "
                                          "\"tls\" (usually port 465), or tls = \"none\" only "
                                          "for a relay on this machine")]
            try:
                await smtp.starttls()
                await smtp.ehlo()
            except (aiosmtplib.SMTPException, OSError) as e:
                return [*out, fail(CHECK, f"STARTTLS with {where} failed "
                                          f"({e.__cause__ or e}); check the server's "
                                          "certificate (its name must be [smtp] host)")]
            out.append(ok(CHECK, "STARTTLS: the session is encrypted, certificate valid"))
        elif s.tls == "none" and not is_loopback(s.host):
            better = "set tls = \"starttls\"" if offers_tls else "use port 465 with tls = \"tls\""
            out.append(warn(CHECK, f"tls = \"none\" to {s.host}: mail and password go in clear; "
                                   f"{better}"))
        if s.username is not None:
            if not smtp.supports_extension("auth"):
                hint = ("" if s.tls != "none" or not offers_tls else
                        "; or, if it asks for a login only over TLS, set tls = \"starttls\"")
                return [*out, fail(CHECK, f"{where} offers no login (AUTH): remove username "
                                          f"from [smtp] for a relay that needs none{hint}")]
            methods = ", ".join(smtp.supported_auth_methods) or "none we know"
            out.append(ok(CHECK, f"AUTH offered ({methods})"))
            if s.password is None:
                return [*out, fail(CHECK, f"${ENV_PASSWORD} is not set: `export "
                                          f"{ENV_PASSWORD}=…` before sending")]
            try:
                await smtp.login(s.username, s.password)
            except aiosmtplib.SMTPAuthenticationError as e:
                return [*out, fail(CHECK, f"{where} refused the login for {s.username}: "
                                          f"{e.code} {e.message}; check [smtp] username and "
                                          f"${ENV_PASSWORD} (many providers want an "
                                          "app password / 授权码, not the mailbox password)")]
            except aiosmtplib.SMTPException as e:
                return [*out, fail(CHECK, f"login to {where} failed: {e}")]
            out.append(ok(CHECK, f"AUTH accepted for {s.username}"))
        sender = config.sender.address
        try:
            await smtp.mail(sender)
        except aiosmtplib.SMTPResponseException as e:
            hint = ("set tls = \"starttls\"" if "STARTTLS" in e.message.upper() else
                    "set [smtp] username (and $MAILER_SMTP_PASSWORD)" if s.username is None
                    else "use a sender.address this login may send for")
            return [*out, fail(CHECK, f"{where} refuses mail from {sender}: {e.code} "
                                      f"{e.message}; {hint}")]
        out.append(ok(CHECK, f"{where} accepts mail from {sender}"))
        with contextlib.suppress(aiosmtplib.SMTPException):
            await smtp.rset()
        return out
    except (aiosmtplib.SMTPException, OSError) as e:
        return [*out, fail(CHECK, f"{where} dropped the session ({e}); try again, then ask "
                                  "the relay's operator")]
    finally:
        if smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await smtp.quit()
        smtp.close()


def check_relay(config: Config) -> list[Finding]:
    """Connect, EHLO, STARTTLS, AUTH offered and accepted, MAIL FROM accepted."""
    return asyncio.run(_relay(config))
