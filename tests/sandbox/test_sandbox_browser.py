"""The sandbox page in a real browser: Debian's headless Chromium driven by Selenium.

``botyard sandbox`` runs as a subprocess on the repository's example registry
(plus a bot with inline buttons); the test uses the page as a person would and
keeps a screenshot in ``test-artifacts/sandbox.png``.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from e2e import QUESTIONS, REPO, THANKS
from sandbox_helpers import example_registry, sandbox_process

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts"
TIMEOUT = 60.0

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        f"browser tests need Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
        "apt-get install -y chromium chromium-driver (./scripts/test does it as root)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402 - only importable where the browser tests run
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver's path: Selenium Manager stays idle
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1440,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The sandbox page, driven through the elements a person sees."""

    def __init__(self, driver: webdriver.Chrome, url: str) -> None:
        self.driver = driver
        self.url = url

    def until(self, condition: Callable[[], Any], what: str) -> Any:
        def check(_: object) -> Any:
            return condition()

        return WebDriverWait(
            self.driver,
            TIMEOUT,
            poll_frequency=0.1,
            ignored_exceptions=[StaleElementReferenceException, NoSuchElementException],
        ).until(check, f"{what} (within {TIMEOUT}s)")

    def click(self, css: str) -> None:
        """Click once the element is there (the page may be redrawing it)."""

        def clicked() -> bool:
            self.find(css).click()
            return True

        self.until(clicked, f"{css} can be clicked")

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return str(self.find(css).text)

    def statuses(self) -> dict[str, str]:
        pairs = self.driver.execute_script(
            "return [...document.querySelectorAll('#bots .bot')]"
            ".map(item => [item.dataset.bot, item.dataset.status])"
        )
        return dict(pairs)

    def counters(self, bot: str) -> str:
        return str(self.find(f'#bots .bot[data-bot="{bot}"] .counters').text)

    def open_chat(self, bot: str, user: str) -> None:
        self.click(f'#bots .bot[data-bot="{bot}"]')
        self.click(f'#users button[data-user="{user}"]')
        self.until(
            lambda: (
                self.driver.current_url.endswith(f"/bots/{bot}/users/{user}")
                and f"{bot} · " in self.text("#chat-title")
                and self.find("#messages").get_attribute("data-chat") == f"{bot}/{user}"
            ),
            f"the chat of {bot} with user {user} is shown",
        )

    def messages(self) -> list[tuple[str, str]]:
        return [
            (
                item.get_attribute("data-from") or "",
                item.find_element(By.CSS_SELECTOR, ".text").text,
            )
            for item in self.driver.find_elements(By.CSS_SELECTOR, "#messages .message")
        ]

    def say(self, text: str, reply: str) -> None:
        """Type ``text``, send it, and wait until the bot's ``reply`` is the last message."""
        before = len(self.messages())
        field = self.find("#text")
        field.clear()
        field.send_keys(text)
        self.click("#send")
        self.until(
            lambda: len(self.messages()) >= before + 2 and self.messages()[-1] == ("bot", reply),
            f"the bot answers {text!r} with {reply!r}",
        )

    def fsm(self) -> tuple[str, Any]:
        return self.text("#fsm-state"), json.loads(self.text("#fsm-data"))

    def wait_fsm(self, state: str, data: dict[str, Any]) -> None:
        self.until(lambda: self.fsm() == (state, data), f"FSM state {state} with data {data}")


def last_message_is(page: Page, message: tuple[str, str]) -> bool:
    return page.messages()[-1] == message


def test_the_page_runs_the_example_bots_for_several_users(
    browser: webdriver.Chrome, tmp_path: Path, mongo_uri: str, database_name: str
) -> None:
    registry = example_registry(tmp_path, database_name)
    with sandbox_process(registry, {"MONGODB_URI": mongo_uri}) as (process, url):
        browser.get(url)
        page = Page(browser, url)
        page.until(
            lambda: (
                page.statuses()
                == dict.fromkeys(["registration", "questionnaire", "echo", "counter"], "running")
            ),
            "every bot is listed as running",
        )
        assert page.find("#connection").text == "live"

        # The questionnaire, as Alice and Bob in turns; each sees only their own chat and state.
        page.open_chat("questionnaire", "1001")
        page.say("/start", QUESTIONS[0])
        page.wait_fsm("Questionnaire:q1", {})
        page.open_chat("questionnaire", "1002")
        assert page.messages() == [], "Bob's chat is not Alice's"
        page.say("/start", QUESTIONS[0])
        page.say("cat", QUESTIONS[1])
        page.wait_fsm("Questionnaire:q2", {"q1": "cat"})
        page.open_chat("questionnaire", "1001")
        assert page.messages() == [("user", "/start"), ("bot", QUESTIONS[0])]
        page.wait_fsm("Questionnaire:q1", {})
        page.say("red", QUESTIONS[1])
        page.say("dog", QUESTIONS[2])
        page.wait_fsm("Questionnaire:q3", {"q1": "red", "q2": "dog"})
        page.open_chat("questionnaire", "1002")
        page.say("parrot", QUESTIONS[2])
        page.open_chat("questionnaire", "1001")
        page.say("pizza", THANKS)
        page.wait_fsm("none", {"q1": "red", "q2": "dog", "q3": "pizza"})
        page.open_chat("questionnaire", "1002")
        page.say("soup", THANKS)
        page.wait_fsm("none", {"q1": "cat", "q2": "parrot", "q3": "soup"})
        page.until(
            lambda: (
                "handled 8" in page.counters("questionnaire")
                and "FSM records 2" in page.counters("questionnaire")
            ),
            "the bot list counts 8 updates handled and 2 FSM records",
        )

        # Reset Bob: his record is gone from MongoDB, Alice's stays.
        page.click("#reset")
        page.wait_fsm("none", {})
        page.until(
            lambda: "FSM records 1" in page.counters("questionnaire"), "one FSM record is left"
        )
        page.open_chat("questionnaire", "1001")
        page.wait_fsm("none", {"q1": "red", "q2": "dog", "q3": "pizza"})

        # The registration bot, as Carol.
        page.open_chat("registration", "1003")
        page.say("/start", "Please enter your name.")
        page.wait_fsm("Registration:waiting_for_name", {})
        page.say(
            "Carol Danvers",
            "Your name, Carol Danvers, was recorded and state is stored in MongoDB.",
        )
        page.wait_fsm("none", {"name": "Carol Danvers"})

        # Inline buttons: the bot edits its message in place.
        page.open_chat("counter", "1003")
        page.say("/start", "Count: 0")
        for expected in ("Count: 1", "Count: 2"):
            page.click('#messages .message[data-from="bot"] button[data-callback="inc"]')
            page.until(partial(last_message_is, page, ("bot", expected)), f"edited to {expected}")
        page.wait_fsm("none", {"count": 2})
        assert len(page.messages()) == 2, "edited in place, not sent again"
        assert page.text('#messages .message[data-from="bot"] .edited') == "edited"

        # Something the emulator cannot carry: the page says why, nothing breaks.
        page.find("#text").clear()
        page.find("#text").send_keys("   ")
        page.click("#send")
        page.until(lambda: "cannot send an empty message" in page.text("#notice"), "a notice")

        # A revoked token: that bot is unauthorized, the others still answer.
        emulator = re.search(r"Bot API emulator listening on (http://\S+)", process.output)
        assert emulator is not None
        request = urllib.request.Request(
            f"{emulator.group(1)}/_emulator/bots/echo_bot/revoke", method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["revoked"] is True
        page.until(lambda: page.statuses()["echo"] == "unauthorized", "echo is unauthorized")
        page.open_chat("questionnaire", "1003")
        page.say("/start", QUESTIONS[0])
        page.wait_fsm("Questionnaire:q1", {})
        assert page.statuses() == {
            "registration": "running",
            "questionnaire": "running",
            "echo": "unauthorized",
            "counter": "running",
        }
        page.open_chat("questionnaire", "1001")
        page.wait_fsm("none", {"q1": "red", "q2": "dog", "q3": "pizza"})
        assert page.messages()[-2:] == [("user", "pizza"), ("bot", THANKS)]
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "sandbox.png"
        assert browser.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")

        # Saving the registry reloads it: the bot list follows.
        text = registry.read_text()
        registry.write_text(
            text.replace("  - name: counter\n    routers: [sandbox_counter:router]\n", "")
        )
        page.until(
            lambda: list(page.statuses()) == ["registration", "questionnaire", "echo"],
            "the counter bot leaves the list",
        )

        # A URL naming a bot that does not exist: the page says which bots do.
        browser.get(url + "bots/ghost/users/1001")
        page.until(lambda: "no bot named 'ghost'" in page.text("#problem"), "the problem is shown")
        assert "(bots: registration, questionnaire, echo)" in page.text("#problem")
        assert page.find("#text").get_attribute("disabled") is not None
        assert process.stop() == 0
