"""mailer: render a periodic bulletin (简报) and deliver it to its report-to and send-to lists."""

__version__ = "0.1.0"
