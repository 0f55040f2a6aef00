"""Logging filter that scrubs provider credentials from every record."""

import logging
import re

# Langfuse keys (pk-lf-/sk-lf-), Stripe keys (sk_/rk_/pk_ test and live) and
# HTTP credentials. A provider echoing a masked key fragment is caught too.
SECRET_PATTERN = re.compile(
    r"(?:sk|pk)-lf-[\w-]+"
    r"|(?:sk|rk|pk)_(?:test|live)_[\w*]+"
    r"|(?i:authorization:\s*\S+\s+\S+)"
    r"|(?i:(?:basic|bearer)\s+[A-Za-z0-9+/=._-]{8,})"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return SECRET_PATTERN.sub(REDACTED, text)


class RedactSecretsFilter(logging.Filter):
    """Render the message, redact it, and drop the args so nothing re-renders."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact(
                logging.Formatter().formatException(record.exc_info)
            )
            record.exc_info = None
        return True
