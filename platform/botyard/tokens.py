"""Bot tokens: shape check, masking, and redaction of logs and error messages.

A bot token is a password: whoever holds it controls the bot. botyard hosts many
bots in one process, so one careless log line can leak dozens of them. Every
place that prints text which might contain a token goes through :func:`redact`
(error messages here, and the log handlers' filter), and every error about a
token describes it without quoting it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = [
    "TOKEN_PATTERN",
    "TokenRedactor",
    "check_token",
    "mask_token",
    "mask_uri",
    "redact",
]

TOKEN_PATTERN = re.compile(r"\d{5,20}:[A-Za-z0-9_-]{30,64}")
"""Shape of a Telegram bot token: the bot's numeric id, a colon, and the secret."""

# Tokens appear inside URLs such as ``.../bot123456:AAE.../getMe``, where no word
# boundary precedes the digits, hence look-arounds instead of ``\b``.
_TOKEN_IN_TEXT = re.compile(r"(?<!\d)(\d{5,20}):[A-Za-z0-9_-]{30,64}(?![A-Za-z0-9_-])")
#: The same in a URL-encoded text (``123456%3AAAE...``, as in a logged query string).
_ENCODED_TOKEN_IN_TEXT = re.compile(r"(?<!\d)(\d{5,20})%3[Aa][A-Za-z0-9_-]{30,64}(?![A-Za-z0-9_-])")
#: Runs of secret characters long enough to be a known secret standing alone.
_SECRET_RUN = re.compile(r"[A-Za-z0-9_-]{16,}")
_DIGITS_BEFORE_COLON = re.compile(r"(\d+):")


def check_token(value: str) -> str:
    """Return ``value`` without surrounding whitespace if it is shaped like a bot token.

    Raises ``ValueError`` whose message says what is wrong without repeating
    the value (it may be a real token with one character missing).
    """
    token = value.strip()
    if TOKEN_PATTERN.fullmatch(token):
        return token
    raise ValueError(
        f"malformed token (expected '<digits>:<secret>', got {len(token)} characters"
        f"{_token_hint(token)})"
    )


def _token_hint(token: str) -> str:
    """Everything wrong with the token's shape, without any of its characters."""
    if not token:
        return ""
    bot_id, colon, secret = token.partition(":")
    if not colon:
        return ", no ':'"
    hints = []
    if not bot_id.isdigit():
        hints.append("the part before ':' is not all digits")
    elif not 5 <= len(bot_id) <= 20:
        hints.append(f"the bot id before ':' has {len(bot_id)} digits, expected 5 to 20")
    if not re.fullmatch(r"[A-Za-z0-9_-]*", secret):
        hints.append("the secret contains characters other than A-Z a-z 0-9 _ -")
    elif not 30 <= len(secret) <= 64:
        hints.append(f"the secret after ':' has {len(secret)} characters, expected 30 to 64")
    return "".join(f", {hint}" for hint in hints)


def mask_token(token: str) -> str:
    """``'123456789:AAE...'`` -> ``'123456789:***'``: the bot id stays, to tell bots apart."""
    bot_id, colon, _ = token.strip().partition(":")
    if colon and bot_id.isdigit():
        return f"{bot_id}:***"
    return "***"


class TokenRedactor:
    """Masks the tokens and secrets it knows, and anything shaped like a token, in any text.

    A token is masked in every form it takes in text: plain, URL-encoded
    (``123%3AAAE...``), and its secret part standing alone (an error quoting
    only what follows the colon). Other secrets it was told about (webhook
    secrets) are masked wherever they stand alone.

    A process hosting 10,000 bots knows 10,000 tokens, and every log line passes
    through here: replacing each known token in turn made one line cost 5 ms.
    Known tokens are looked up by the bot id before a ``:`` in the text, and bare
    secrets by the runs of secret characters in it, so the cost follows the
    length of the text, not the number of tokens.
    """

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self._by_id: dict[str, set[str]] = {}
        #: Known secrets without a ``<digits>:`` prefix (malformed), replaced literally.
        self._odd: set[str] = set()
        #: Secrets masked when they stand alone: tokens' secret parts, webhook secrets.
        self._bare: set[str] = set()
        self.remember(tokens)

    def remember(self, tokens: Iterable[str]) -> None:
        for raw in tokens:
            token = raw.strip() if raw else ""
            if not token:
                continue
            bot_id, colon, secret = token.partition(":")
            if colon and bot_id.isdigit() and 5 <= len(bot_id) <= 20:  # what __call__ looks up
                self._by_id.setdefault(bot_id, set()).add(token)
            else:
                self._odd.update({token, quote(token, safe="")})
            if colon and _SECRET_RUN.fullmatch(secret):
                self._bare.add(secret)

    def remember_secrets(self, secrets: Iterable[str]) -> None:
        """Mask these secrets (webhook path secrets and secret tokens) as ``***``."""
        self._bare.update(secret for secret in secrets if _SECRET_RUN.fullmatch(secret))

    def __call__(self, text: str) -> str:
        known = set(self._odd)
        if self._by_id:
            for digits in set(_DIGITS_BEFORE_COLON.findall(text)):
                # A bot id is 5 to 20 digits; "x9123456:" may hold bot 123456's token.
                for start in range(max(0, len(digits) - 20), len(digits) - 4):
                    known.update(self._by_id.get(digits[start:], ()))
        for token in sorted(known, key=len, reverse=True):
            text = text.replace(token, mask_token(token))
        text = _TOKEN_IN_TEXT.sub(lambda match: f"{match.group(1)}:***", text)
        text = _ENCODED_TOKEN_IN_TEXT.sub(lambda match: f"{match.group(1)}%3A***", text)
        if self._bare:
            text = _SECRET_RUN.sub(
                lambda match: "***" if match.group() in self._bare else match.group(), text
            )
        return text


def redact(text: str, tokens: Iterable[str] = ()) -> str:
    """Replace every token in ``text`` with its masked form.

    ``tokens`` lists known secrets, including malformed ones that the generic
    pattern would miss; anything else shaped like a token is masked as well.
    """
    return TokenRedactor(tokens)(text)


def mask_uri(uri: str) -> str:
    """Hide the password in a URI (``mongodb://user:***@host/db``), for logs and errors."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))
