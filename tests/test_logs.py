"""Logging: JSON lines with the update's context, and redaction that holds for every handler."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from botyard.logs import LogContext, configure_logging, log_context

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    factory = logging.getLogRecordFactory()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.setLogRecordFactory(factory)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.usefixtures("restored_logging")
def test_json_lines_carry_the_context_and_the_exception_as_one_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    redactor = configure_logging("INFO", log_format="json")
    redactor.remember([TOKEN])
    logger = logging.getLogger("botyard.test")
    token = log_context.set(LogContext("shop", 7001, -100123))
    try:
        logger.warning("calling %s failed", f"https://api.telegram.org/bot{TOKEN}/sendMessage")
        try:
            raise RuntimeError(f"bad token {TOKEN}")
        except RuntimeError:
            logger.exception("handler failed")
    finally:
        log_context.reset(token)
    logger.info("no update here")

    err = capsys.readouterr().err
    assert TOKEN not in err
    first, second, third = json_lines(err)
    assert first["level"] == "WARNING"
    assert first["logger"] == "botyard.test"
    assert (
        first["message"] == "calling https://api.telegram.org/bot123456789:***/sendMessage failed"
    )
    assert (first["bot"], first["update_id"], first["chat_id"]) == ("shop", 7001, -100123)
    assert str(first["time"]).endswith("+00:00")
    assert second["message"] == "handler failed"
    assert "RuntimeError: bad token 123456789:***" in str(second["exception"])
    assert "Traceback" in str(second["exception"])
    assert set(third) == {"time", "level", "logger", "message"}


@pytest.mark.usefixtures("restored_logging")
def test_a_foreign_handler_on_the_root_logger_sees_only_redacted_text() -> None:
    configure_logging("DEBUG").remember([TOKEN])
    stream = io.StringIO()
    foreign = logging.StreamHandler(stream)  # as logging.basicConfig in a bot module adds
    foreign.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.getLogger().addHandler(foreign)
    seen: list[logging.LogRecord] = []

    class ErrorTracker(logging.Handler):  # reads the record's fields, as Sentry's does
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logging.getLogger().addHandler(ErrorTracker())
    logger = logging.getLogger("bots.shop")
    logger.info("token is %s", TOKEN)
    try:
        raise ValueError(f"url /bot{TOKEN}/getMe")
    except ValueError:
        logger.exception("failed")
    logger.warning("with a stack", stack_info=True)

    output = stream.getvalue()
    assert TOKEN not in output
    assert "token is 123456789:***" in output
    assert "ValueError: url /bot123456789:***/getMe" in output
    assert "Stack (most recent call last)" in output
    for record in seen:
        assert record.exc_info is None, "the exception object would carry the raw token"
        assert TOKEN not in record.getMessage()
        assert TOKEN not in (record.exc_text or "")
        assert TOKEN not in (record.stack_info or "")


@pytest.mark.usefixtures("restored_logging")
def test_stack_info_is_redacted() -> None:
    redactor = configure_logging("INFO")
    redactor.remember([TOKEN])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.stack_info = f'  File "bot.py", line 3, in main\n    call("{TOKEN}")'
    redactor.filter(record)
    assert TOKEN not in record.stack_info
    assert "123456789:***" in record.stack_info


@pytest.mark.usefixtures("restored_logging")
def test_a_log_call_whose_arguments_do_not_fit_never_raises_into_the_caller(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The standard library reports a bad format and goes on; the caller (a handler) never
    sees an error from a log line, and the line still names the token masked."""
    configure_logging("INFO").remember([TOKEN])
    logging.getLogger("bots.shop").warning(f"{TOKEN}: %d items", "several")
    err = capsys.readouterr().err
    assert TOKEN not in err
    assert "123456789:***: %d items" in err
    assert "several" not in err, "the arguments may be users' data: not logged"
    assert "TypeError" in err


@pytest.mark.usefixtures("restored_logging")
def test_a_bots_own_extra_fields_named_like_the_context_are_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``extra={"chat_id": ...}`` is an ordinary logging call in a bot: it must not raise
    because botyard puts the update's context on every record."""
    configure_logging("INFO", log_format="json")
    token = log_context.set(LogContext("shop", 7001, -100123))
    try:
        logging.getLogger("bots.shop").info("order placed", extra={"chat_id": 5, "bot": "x"})
    finally:
        log_context.reset(token)
    [line] = json_lines(capsys.readouterr().err)
    assert line["message"] == "order placed"
    assert (line["bot"], line["update_id"], line["chat_id"]) == ("shop", 7001, -100123)
