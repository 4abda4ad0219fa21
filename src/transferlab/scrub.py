"""Free text (an exception's message, a console line, a command) without the secrets this
process was given: credentials inside URLs are stripped wherever they appear, and every
value that tracking.redaction found under a secret's key is replaced wherever it appears.

Free text has no keys, so only the values seen by name can be found in it: tracking.redaction
remembers each one it redacts (from the config, the overrides, the sweep's definition),
and a job registers its whole config before it runs (multirun.RedactedHydraFiles). Values
shorter than MIN_LENGTH are not searched for: replacing `me` or `42` everywhere would
garble every message, and such a value is no secret worth the name.

No import of transferlab: errors.py, which prints every UserError, depends on it.
"""

from __future__ import annotations

import logging
import re

REDACTED = "<redacted>"
MIN_LENGTH = 4
# scheme://userinfo@ : the userinfo runs up to the last `@` before the path, query or end;
# also as Hydra escapes a sweep job's overrides (`https\://user\:pw@host`).
_URL_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*\\?://)([^/?#\s]+)@")
_KNOWN: set[str] = set()


def remember(value: object) -> None:
    """Searches free text for `value` (the text of a secret, or each one of a list)."""
    if isinstance(value, list | tuple):
        for item in value:
            remember(item)
    elif value is not None and not isinstance(value, bool | dict):
        text = str(value)
        if len(text) >= MIN_LENGTH:
            _KNOWN.add(text)


def without_url_credentials(text: str) -> str:
    """`text` with `user:password@` of every URL in it replaced by `<redacted>@`; the
    password (and the whole userinfo) remembered, for text that holds it elsewhere."""
    return _URL_CREDENTIALS.sub(_strip_userinfo, text)


def scrubbed(text: str) -> str:
    """`text` with URL credentials stripped and every remembered secret replaced."""
    text = without_url_credentials(text)
    for secret in sorted(_KNOWN, key=len, reverse=True):  # a longer one may contain another
        text = text.replace(secret, REDACTED)
    return text


def scrub_log_records() -> None:
    """Scrubs every log record this process makes from now on: Hydra's launchers log each
    job's overrides as given (`#0 : +dataset.token=...`). Installed once, as the record
    factory, which every logger (and every handler a job configures later) goes through."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "scrubs", False):
        return

    def scrubbing(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format: the handler reports it, as without us
            return record
        clean = scrubbed(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    scrubbing.scrubs = True
    logging.setLogRecordFactory(scrubbing)


def _strip_userinfo(match: re.Match) -> str:
    userinfo = match.group(2)
    if userinfo != REDACTED:
        remember(userinfo)
        remember(userinfo.partition(":")[2])
    return f"{match.group(1)}{REDACTED}@"
