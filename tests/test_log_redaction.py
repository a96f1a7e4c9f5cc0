"""What reaches the log: no token or secret in any form, no library's DEBUG dump, no huge line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError

from botyard.logs import MAX_LINE_CHARS, MAX_RECORD_CHARS, configure_logging
from botyard.tokens import TokenRedactor
from botyard.webhook.secrets import SecretStore

TOKEN = "123456789:AAEhBOweik9ai2o4LDfWdQpmosRFqh9x2-c"
SECRET = TOKEN.partition(":")[2]
USER_DATA = "passport-number-5550199"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    factory = logging.getLogRecordFactory()
    levels = {name: logging.getLogger(name).level for name in ("pymongo", "aiogram.event")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def test_every_form_of_a_token_is_masked() -> None:
    redact = TokenRedactor([TOKEN])
    encoded = TOKEN.replace(":", "%3A")
    text = f"GET /bot{encoded}/getMe; secret {SECRET} rejected; ({SECRET})"
    assert redact(text) == "GET /bot123456789%3A***/getMe; secret *** rejected; (***)"
    unknown = "987654321%3aBBEhBOweik9ai2o4LDfWdQpmosRFqh9x2-c"
    assert TokenRedactor()(f"url?token={unknown}&x=1") == "url?token=987654321%3A***&x=1"
    assert redact("an ordinary_identifier_of_some_length stays") == (
        "an ordinary_identifier_of_some_length stays"
    )


def test_an_exception_quoting_a_bare_secret_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    redactor = configure_logging("INFO")
    redactor.remember([TOKEN])
    try:
        raise ValueError(f"Unauthorized: secret {SECRET} is revoked")
    except ValueError:
        logging.getLogger("botyard.test").exception("call failed")
    err = capsys.readouterr().err
    assert "secret *** is revoked" in err
    assert SECRET not in err


async def test_debug_leaves_pymongo_at_info_unless_named(
    capsys: pytest.CaptureFixture[str], mongo_uri: str, database_name: str
) -> None:
    async def write_user_data() -> str:
        client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri)
        try:
            await client[database_name].records.insert_one({"data": USER_DATA})
            await client.drop_database(database_name)
        finally:
            await client.close()
        return capsys.readouterr().err

    configure_logging("DEBUG")
    logging.getLogger("botyard.test").debug("botyard's own detail")
    err = await write_user_data()
    assert "botyard's own detail" in err
    assert USER_DATA not in err
    assert logging.getLogger("pymongo.command").getEffectiveLevel() == logging.INFO

    configure_logging("DEBUG", debug_loggers=["pymongo"])
    assert USER_DATA in await write_user_data()  # what the cap keeps out


async def test_webhook_secrets_never_reach_the_log(
    capsys: pytest.CaptureFixture[str], mongo_client: AsyncMongoClient[Any], database_name: str
) -> None:
    redactor = configure_logging("DEBUG", debug_loggers=["pymongo"])
    store = SecretStore(mongo_client[database_name], on_read=redactor.remember_secrets)
    secret = await store.get_or_create("shop")
    await store.current(["shop"])  # what runs every 10 s
    rotated = await store.rotate("shop")
    logging.getLogger("botyard.test").info("path /webhook/shop/%s", rotated.path)
    await mongo_client.drop_database(database_name)
    err = capsys.readouterr().err
    assert "pymongo.command" in err  # the commands were logged...
    for value in (secret.path, secret.token, rotated.path, rotated.token):
        assert value not in err  # ...without the secrets
    assert "/webhook/shop/***" in err


def test_huge_messages_and_tracebacks_are_cut(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    huge = "x" * 5_000_000
    logging.getLogger("botyard.test").warning("document: %s", huge)
    try:
        raise RuntimeError(f"{'y' * 3_000_000} with {TOKEN}")
    except RuntimeError:
        logging.getLogger("botyard.test").exception("write failed")
    many_lines = "\n".join(["z" * 100] * 1000)
    logging.getLogger("botyard.test").warning("%s", many_lines)
    err = capsys.readouterr().err
    assert len(err) < 3 * (MAX_RECORD_CHARS + 200)
    assert "4998010 more characters not logged" in err
    assert "write failed" in err
    assert "RuntimeError: yyy" in err
    assert max(len(line) for line in err.splitlines()) <= MAX_LINE_CHARS + 100
    assert SECRET not in err


def test_a_token_the_line_limit_cuts_is_not_pulled_in_by_masking_the_ones_before(
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = "987654321:BBEhBOweik9ai2o4LDfWdQpmosRFqh9x2-z"
    configure_logging("INFO").remember([TOKEN, other])
    masked_before = " ".join([TOKEN] * 40)  # masking them frees 1,280 characters
    filler = "x" * (MAX_LINE_CHARS + 65 - len(masked_before) - 2)
    logging.getLogger("botyard.test").warning("%s %s %s tail", masked_before, filler, other)
    err = capsys.readouterr().err
    assert other.partition(":")[2][:8] not in err, "part of the second token's secret"
    assert "123456789:***" in err
    assert "more characters not logged" in err


def test_a_database_error_quoting_a_users_document_is_logged_without_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """PyMongo puts the server's whole answer in its errors' text, with each failed bulk
    operation (a user's FSM data, a journaled update) quoted; the codes are enough."""
    configure_logging("INFO")
    error = BulkWriteError(
        {
            "writeErrors": [
                {
                    "index": 0,
                    "code": 121,
                    "errmsg": "Document failed validation",
                    "op": {"q": {"chat_id": 7}, "u": {"$set": {"data": {"id": USER_DATA}}}},
                }
            ],
            "writeConcernErrors": [],
            "nInserted": 0,
        }
    )
    logger = logging.getLogger("botyard.test")
    try:
        raise error
    except BulkWriteError:
        logger.exception("storing failed")
    logger.warning("gave up: %s", error)
    err = capsys.readouterr().err
    assert USER_DATA not in err
    assert err.count("BulkWriteError") == 1
    assert err.count("batch op errors occurred, full error: not logged (codes 121)") == 2
