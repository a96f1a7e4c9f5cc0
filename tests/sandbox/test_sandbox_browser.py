"""The sandbox page in a real browser: Debian's headless Chromium driven by Selenium.

``botyard sandbox`` runs as a subprocess on the repository's example registry
(plus a bot with inline buttons and one whose handler fails); the tests use the
page as a person would. One sandbox process and one browser serve every test of
the module, in file order (starting Chromium and the bots is most of the time);
the last test stops the sandbox and starts it again. Screenshots are kept in
``test-artifacts/`` (and in each test's temporary folder).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from botyard.database.embedded import free_port

from e2e import QUESTIONS, REPO, THANKS, BotyardProcess
from sandbox_helpers import example_registry, sandbox_process

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "test-artifacts"
TIMEOUT = 60.0
WIDE = (1440, 900)
#: Window widths the layout must fit without scrolling sideways: a laptop's half, a phone.
NARROW = (800, 420)

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


@pytest.fixture(scope="module")
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
        "--hide-scrollbars",
        f"--window-size={WIDE[0]},{WIDE[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Running:
    """The module's sandbox process; the last test replaces it by a second run."""

    def __init__(self, registry: Path, env: dict[str, str], port: int) -> None:
        self.registry = registry
        self.env = env
        self.port = port
        self.stack = contextlib.ExitStack()
        self.process, self.url = self.start()

    def start(self) -> tuple[BotyardProcess, str]:
        return self.stack.enter_context(
            sandbox_process(self.registry, self.env, "--port", str(self.port))
        )

    @property
    def emulator_url(self) -> str:
        found = re.search(r"Bot API emulator listening on (http://\S+)", self.process.output)
        assert found is not None
        return found.group(1)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("browser")
    registry = example_registry(folder, f"browser_{uuid.uuid4().hex[:12]}", failing=True)
    running = Running(registry, {"MONGODB_URI": mongo_uri}, free_port())
    with running.stack:
        yield running


@pytest.fixture(scope="module")
def page(browser: webdriver.Chrome, sandbox: Running) -> Page:
    browser.get(sandbox.url)
    shown = Page(browser, sandbox.url)
    shown.until(
        lambda: set(shown.statuses().values()) == {"running"} and len(shown.statuses()) == 5,
        "every bot is listed as running",
    )
    return shown


def keep_screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    """Save a screenshot in the test's folder and in ``test-artifacts/``."""
    ARTIFACTS.mkdir(exist_ok=True)
    for folder in (tmp_path, ARTIFACTS):
        assert driver.save_screenshot(str(folder / name))
    print(f"screenshot: {ARTIFACTS / name}")
    return ARTIFACTS / name


def call(url: str, payload: dict[str, Any] | None = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="POST" if data or url.endswith("revoke") else "GET",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


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

    def notes(self, kind: str) -> list[WebElement]:
        return list(
            self.driver.find_elements(
                By.CSS_SELECTOR, f'#messages .message.from-sandbox[data-kind="{kind}"]'
            )
        )

    def documents(self) -> list[Any]:
        return [
            json.loads(item.text)
            for item in self.driver.find_elements(By.CSS_SELECTOR, "#documents .document pre")
        ]

    def fsm(self) -> tuple[str, Any]:
        return self.text("#fsm-state"), json.loads(self.text("#fsm-data"))

    def wait_fsm(self, state: str, data: dict[str, Any]) -> None:
        self.until(lambda: self.fsm() == (state, data), f"FSM state {state} with data {data}")


def last_message_is(page: Page, message: tuple[str, str]) -> bool:
    return page.messages()[-1] == message


def test_the_page_runs_the_example_bots_for_several_users(
    page: Page, sandbox: Running, tmp_path: Path
) -> None:
    browser, registry = page.driver, sandbox.registry
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
    # The answers are saved as a document of the bot's own and the conversation cleared.
    page.wait_fsm("none", {})
    page.until(
        lambda: (
            [d.get("answers") for d in page.documents()]
            == [{"q1": "red", "q2": "dog", "q3": "pizza"}]
        ),
        "the saved answers are shown",
    )
    assert page.find("#documents .document").get_attribute("data-collection") == (
        "questionnaire_answers"
    )
    page.until(
        lambda: (
            "handled 7" in page.counters("questionnaire")
            and "FSM records 1" in page.counters("questionnaire")
        ),
        "the bot list counts 7 updates handled and Bob's FSM record",
    )

    # Reset Bob half-way: his record is gone from MongoDB, and the chat says so.
    page.open_chat("questionnaire", "1002")
    page.wait_fsm("Questionnaire:q3", {"q1": "cat", "q2": "parrot"})
    page.click("#reset")
    page.wait_fsm("none", {})
    page.until(lambda: len(page.notes("reset")) == 1, "the reset is marked in the chat")
    page.until(lambda: "FSM records 0" in page.counters("questionnaire"), "no FSM record is left")
    page.say("/start", QUESTIONS[0])
    assert page.messages()[-2:] == [("user", "/start"), ("bot", QUESTIONS[0])]
    page.open_chat("questionnaire", "1001")
    page.wait_fsm("none", {})

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
    assert call(f"{sandbox.emulator_url}/_emulator/bots/echo_bot/revoke")["revoked"] is True
    page.until(lambda: page.statuses()["echo"] == "unauthorized", "echo is unauthorized")
    page.open_chat("echo", "1001")
    page.until(lambda: "echo's token was revoked" in page.text("#bot-problem"), "said so")
    page.find("#text").send_keys("anyone?")
    page.click("#send")
    page.until(lambda: "echo's token was revoked" in page.text("#notice"), "sending says why")
    page.open_chat("questionnaire", "1003")
    page.say("/start", QUESTIONS[0])
    page.wait_fsm("Questionnaire:q1", {})
    assert page.statuses() == {
        "registration": "running",
        "questionnaire": "running",
        "echo": "unauthorized",
        "counter": "running",
        "failing": "running",
    }
    page.open_chat("questionnaire", "1001")
    assert page.messages()[-2:] == [("user", "pizza"), ("bot", THANKS)]
    keep_screenshot(browser, tmp_path, "sandbox.png")

    # Saving the registry reloads it: the bot list follows.
    text = registry.read_text()
    counter = "  - name: counter\n    routers: [sandbox_counter:router]\n"
    registry.write_text(text.replace(counter, ""))
    page.until(
        lambda: list(page.statuses()) == ["registration", "questionnaire", "echo", "failing"],
        "the counter bot leaves the list",
    )
    registry.write_text(text)
    page.until(lambda: page.statuses().get("counter") == "running", "the counter is back")

    # A URL naming a bot that does not exist: the page says which bots do.
    browser.get(sandbox.url + "bots/ghost/users/1001")
    page.until(lambda: "no bot named 'ghost'" in page.text("#problem"), "the problem is shown")
    assert "(bots: registration, questionnaire, echo, counter, failing)" in page.text("#problem")
    assert page.find("#text").get_attribute("disabled") is not None


def test_a_failing_handler_is_shown_in_its_chat_with_the_traceback_folded(
    page: Page, tmp_path: Path
) -> None:
    page.open_chat("failing", "1002")
    page.find("#text").send_keys("7")
    page.click("#send")
    page.until(lambda: len(page.notes("failure")) == 1, "the failure appears in the chat")
    assert page.messages() == [
        ("user", "7"),
        ("bot", "about to fail on 7"),
        ("sandbox", "the handler failed: ZeroDivisionError: cannot divide 7 by zero"),
    ]
    [failure] = page.notes("failure")
    folded = failure.find_element(By.CSS_SELECTOR, "details.traceback")
    assert folded.get_attribute("open") is None, "the traceback starts folded"
    assert not failure.find_element(By.CSS_SELECTOR, "pre").is_displayed()
    failure.find_element(By.CSS_SELECTOR, "summary").click()
    page.until(lambda: folded.get_attribute("open") is not None, "the traceback unfolds")
    shown = failure.find_element(By.CSS_SELECTOR, "pre").text
    assert shown.startswith("Traceback (most recent call last)")
    assert "ZeroDivisionError: cannot divide 7 by zero" in shown
    page.until(lambda: "errors 1" in page.counters("failing"), "the card counts the error")
    keep_screenshot(page.driver, tmp_path, "sandbox-failure.png")
    page.open_chat("failing", "1001")
    assert page.notes("failure") == [], "only in the chat where it happened"


def test_a_rejected_reload_and_a_bot_that_cannot_start_are_shown(
    page: Page, sandbox: Running
) -> None:
    registry = sandbox.registry
    text = registry.read_text()
    try:
        registry.write_text("bots: [\n")
        page.until(lambda: "not valid YAML" in page.text("#reload-problem"), "the reload error")
        assert "the bots run as before" in page.text("#reload-problem")
        assert set(page.statuses().values()) <= {"running", "unauthorized"}

        registry.write_text(text + "  - name: broken\n    routers: [bots.missing:router]\n")
        page.until(lambda: page.statuses().get("broken") == "not_running", "broken is listed")
        assert not page.find("#reload-problem").is_displayed(), "that reload went through"
        detail = page.text('#bots .bot[data-bot="broken"] .detail')
        assert detail.startswith("could not start: ")
        assert "cannot import bots.missing" in detail
        page.open_chat("broken", "1001")
        page.until(lambda: "broken could not start" in page.text("#bot-problem"), "in the chat")
    finally:
        registry.write_text(text)
    page.until(lambda: "broken" not in page.statuses(), "broken leaves the list")


@pytest.mark.parametrize("width", NARROW)
def test_narrow_windows_need_no_sideways_scrolling_and_reach_every_panel(
    page: Page, tmp_path: Path, width: int
) -> None:
    driver = page.driver
    page.open_chat("questionnaire", "1002")
    page.wait_fsm("Questionnaire:q1", {})
    try:
        driver.set_window_size(width, 900)
        page.until(lambda: driver.execute_script("return window.innerWidth") == width, "resized")
        scroll_width = driver.execute_script("return document.documentElement.scrollWidth")
        assert scroll_width <= width, f"the page is {scroll_width}px wide in a {width}px window"
        tops = {}
        for panel in ("#chat", "#fsm", "#bot-list"):
            box = driver.execute_script(
                "const e = document.querySelector(arguments[0]); e.scrollIntoView();"
                "const r = e.getBoundingClientRect();"
                "return {left: r.left, right: r.right, top: r.top + window.scrollY,"
                " width: r.width, height: r.height};",
                panel,
            )
            assert box["width"] > 0, f"{panel} is shown"
            assert box["height"] > 0, f"{panel} is shown"
            assert box["left"] >= 0, f"{panel} fits: {box}"
            assert box["right"] <= width, f"{panel} fits: {box}"
            tops[panel] = box["top"]
        assert tops["#chat"] <= tops["#fsm"] < tops["#bot-list"], "the chat first, bots last"
        for field in ("#fsm-updated", "#fsm-expires"):
            cut = driver.execute_script(
                "const e = document.querySelector(arguments[0]);"
                "return e.scrollWidth > e.clientWidth + 1;",
                field,
            )
            assert not cut, f"{field} is cut"
        # Every panel works at this width: pick a bot from the list at the bottom, chat.
        page.click('#bots .bot[data-bot="echo"]')
        page.until(lambda: "echo · " in page.text("#chat-title"), "echo's chat is open")
        page.open_chat("registration", "1002")
        page.say("/start", "Please enter your name.")
        page.wait_fsm("Registration:waiting_for_name", {})
        driver.execute_script("window.scrollTo(0, 0)")
        keep_screenshot(driver, tmp_path, f"sandbox-{width}px.png")
    finally:
        driver.set_window_size(*WIDE)


def test_stopping_keeps_the_last_values_and_a_restart_shows_the_transcript(
    page: Page, sandbox: Running, tmp_path: Path
) -> None:
    page.open_chat("questionnaire", "1002")
    page.say("green", QUESTIONS[1])
    page.wait_fsm("Questionnaire:q2", {"q1": "green"})
    before = page.messages()
    handled = page.counters("questionnaire")

    # An update in flight keeps the sandbox stopping for a few seconds.
    api = f"{sandbox.url}api/bots/failing/users/1003/messages"
    call(api, {"text": "slow 6"})

    def in_flight() -> bool:
        bots = {bot["name"]: bot for bot in call(f"{sandbox.url}api/bots")["bots"]}
        failing = bots["failing"]
        return bool(failing["received"] > failing["handled"] + failing["errors"])

    page.until(in_flight, "the slow update is being handled")
    sandbox.process.signal(signal.SIGTERM)
    page.until(lambda: page.text("#connection") == "stopping…", "the page says stopping")
    assert set(page.statuses().values()) == {"stopping"}
    assert page.fsm() == ("Questionnaire:q2", {"q1": "green"}), "the last known state stays"
    assert page.counters("questionnaire") == handled
    assert "database" not in page.text("#registry")
    keep_screenshot(page.driver, tmp_path, "sandbox-stopping.png")
    assert sandbox.process.wait(60) == 0
    page.until(lambda: "reconnecting" in page.text("#connection"), "the page says it is gone")
    assert page.fsm() == ("Questionnaire:q2", {"q1": "green"})
    assert page.messages() == before

    # The next run: the page reconnects by itself and shows the conversation where it was.
    sandbox.process, sandbox.url = sandbox.start()
    page.until(lambda: page.text("#connection") == "live", "the page is live again")
    page.until(
        lambda: page.messages() == before and page.fsm() == ("Questionnaire:q2", {"q1": "green"}),
        "the transcript and the state are back",
    )
    earlier = page.driver.find_elements(By.CSS_SELECTOR, "#messages .message.earlier")
    assert len(earlier) == len(before)
    page.say("cat", QUESTIONS[2])
    page.wait_fsm("Questionnaire:q3", {"q1": "green", "q2": "cat"})
    keep_screenshot(page.driver, tmp_path, "sandbox-restarted.png")
