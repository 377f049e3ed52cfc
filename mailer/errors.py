"""One base error; small subclasses that carry what the user needs to fix the problem.

The CLI turns any ``MailerError`` into one line on stderr and exit code 1, so each
message must read well on its own: what is wrong, where, and how to fix it.
"""

from __future__ import annotations


class MailerError(Exception):
    """Base of every error the user can do something about."""


class ConfigError(MailerError):
    """The configuration file is missing, unreadable, or holds a wrong key or value."""


class StoreError(MailerError):
    """The database cannot be opened or is not in the expected state."""


class NotInitialised(StoreError):
    """The database has not been created with ``mailer init``."""


class UnknownList(MailerError):
    """A list slug that is not configured."""

    def __init__(self, slug: str, known: list[str]) -> None:
        self.slug = slug
        self.known = known
        super().__init__(f"unknown list {slug!r}; known lists: {', '.join(known) or 'none'}")


class UnknownUnit(MailerError):
    """A unit name that is not in the database."""

    def __init__(self, name: str, suggestions: tuple[str, ...] = ()) -> None:
        self.name = name
        self.suggestions = suggestions
        hint = (f"did you mean {' or '.join(suggestions)}?" if suggestions
                else "see `mailer units list` for the units on file")
        super().__init__(f"unknown unit {name!r}; {hint}")


class UnknownRecipient(MailerError):
    """An address that is not in the database."""

    def __init__(self, email: str) -> None:
        self.email = email
        super().__init__(f"no recipient {email!r}; see `mailer recipients list`")


class InvalidInput(MailerError):
    """A value typed or imported by staff is not acceptable."""


class AlreadySo(MailerError):
    """Asked for what is already the case (a state a campaign or unit is in): nothing
    changed, and the CLI says so plainly and exits 0."""


class ImportRejected(MailerError):
    """A recipients file had bad rows; nothing was imported."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        n = len(problems)
        super().__init__(
            f"{source}: {n} bad row{'s' if n != 1 else ''} (listed above); nothing was "
            "imported. Fix them, or use --skip-invalid to import the good rows"
        )


class AlreadySent(MailerError):
    """The issue already went (or is going) to one of these lists."""


class UnknownCampaign(MailerError):
    """A campaign number that is not in the database."""

    def __init__(self, campaign_id: int) -> None:
        self.campaign_id = campaign_id
        super().__init__(f"no campaign {campaign_id}; see `mailer log` for the campaigns")


class StaffOnly(InvalidInput):
    """A list whose members are changed by staff only (report-to bodies)."""

    def __init__(self, list_slug: str) -> None:
        self.list_slug = list_slug
        super().__init__(f"the {list_slug} list is changed by staff only")


class SendError(MailerError):
    """A campaign cannot be sent now; the subclasses say why."""


class RelayUnavailable(SendError):
    """The relay cannot be reached or refuses sessions for now; a later try may work."""

    def __init__(self, host: str, port: int, reason: str, *, campaign_id: int | None = None
                 ) -> None:
        self.host, self.port, self.reason, self.campaign_id = host, port, reason, campaign_id
        hint = (f"; nothing more was sent, `mailer send --resume {campaign_id}` continues"
                if campaign_id is not None else "")
        super().__init__(f"cannot reach the SMTP server {host}:{port}: {reason}{hint}")


class RelayMisconfigured(SendError):
    """The relay cannot be used as configured (TLS, login, no STARTTLS); retrying
    without changing the configuration will not help."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host, self.port, self.reason = host, port, reason
        super().__init__(reason)


class SenderRefused(SendError):
    """The relay refuses our envelope sender: every message would fail alike."""

    def __init__(self, sender: str, code: int, text: str, campaign_id: int) -> None:
        self.sender, self.code, self.text, self.campaign_id = sender, code, text, campaign_id
        super().__init__(
            f"the SMTP server refuses the sender address {sender}: {code} {text}; check "
            f"[sender] address (`mailer send --resume {campaign_id}` continues the campaign)"
        )


class CampaignLocked(SendError):
    """Another live process is sending this campaign."""

    def __init__(self, campaign_id: int, holder: str) -> None:
        self.campaign_id, self.holder = campaign_id, holder
        super().__init__(
            f"campaign {campaign_id} is being sent by another mailer process ({holder}); "
            "wait for it to finish, or stop it first (`mailer pause "
            f"{campaign_id}` stops any sender)"
        )


class CampaignNotSending(SendError):
    """A campaign that cannot be resumed: it is not in the sending state."""

    def __init__(self, campaign_id: int, status: str) -> None:
        self.campaign_id, self.status = campaign_id, status
        super().__init__(
            f"campaign {campaign_id} is {status}; only a sending campaign can be resumed"
        )


class IssueError(MailerError):
    """An issue file cannot be read or parsed."""


class UnsendableRecipient(MailerError):
    """The message cannot be built for this one recipient (an address that has no
    form a header can carry, a bad unsubscribe URL or Message-ID). The delivery
    fails alone with ``reason``; the campaign goes on."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"cannot build the message for {address!r}: {reason}")


class UnsafeHeader(MailerError):
    """A value that would become a header (the subject, a name) holds a character no
    header may carry: a line break or another control character. Raised while the
    message for a whole list is built; nothing of that list can be sent."""

    def __init__(self, header: str, value: str, reason: str) -> None:
        self.header = header
        self.value = value
        self.reason = reason
        super().__init__(f"the {header} {value!r} {reason}; fix it in the issue or the config")
