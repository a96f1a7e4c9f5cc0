"""Questionnaire bot: three questions; the completed answers are saved as a document.

While the questionnaire runs, each answer is kept in the FSM data, so a user
who stops half-way and comes back (even after a restart of the platform) is
asked the question they had reached, with earlier answers kept. The last answer
saves the completed questionnaire as a :class:`QuestionnaireAnswers` document
in the bot's own collection, ``questionnaire_answers``, through the ``database``
the platform hands to every handler, then clears the conversation: FSM state
is for conversations in progress, a result belongs in a collection of its own.
"""

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from aiogram import Bot, F, Router
from aiogram.filters import CommandStart, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import Message
from beanie import Document, init_beanie
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

QUESTIONS = {
    "q1": "Question 1: What is your favorite color?",
    "q2": "Question 2: What is your favorite animal?",
    "q3": "Question 3: What is your favorite food?",
}
THANKS = "Thank you for completing the questionnaire."


class Questionnaire(StatesGroup):
    q1 = State()
    q2 = State()
    q3 = State()


ORDER = [Questionnaire.q1, Questionnaire.q2, Questionnaire.q3]


class QuestionnaireAnswers(Document):
    """One completed questionnaire.

    Its id names the message that completed it (bot, chat, message), so an update
    handled twice (delivery is at least once) saves it once.
    """

    id: str  # type: ignore[assignment]  # "<bot id>:<chat id>:<message id>"
    bot_id: int  # several bots may run this module
    user_id: int
    chat_id: int
    answers: dict[str, str]
    completed_at: datetime

    class Settings:
        name = "questionnaire_answers"


#: The database the model is bound to (Beanie binds a model to one database at a time),
#: with the binding, done or under way.
_binding: list[tuple[AsyncDatabase[Any], asyncio.Future[None]]] = []


async def bind(database: AsyncDatabase[Any]) -> None:
    """Bind :class:`QuestionnaireAnswers` to ``database`` unless it is already (two round trips,
    once: Beanie asks the server its version and collections). Saves that come at once
    wait for one binding; a binding that failed is tried again by the next save."""
    if not _binding or _binding[0][0] is not database or _failed(_binding[0][1]):
        # The model declares no index: nothing to build.
        binding = init_beanie(
            database=database, document_models=[QuestionnaireAnswers], skip_indexes=True
        )
        _binding[:] = [(database, asyncio.ensure_future(binding))]
    # Shielded: a save cancelled while waiting does not cancel the others' binding.
    await asyncio.shield(_binding[0][1])


def _failed(binding: asyncio.Future[None]) -> bool:
    return binding.done() and (binding.cancelled() or binding.exception() is not None)


async def save_answers(
    database: AsyncDatabase[Any], bot: Bot, message: Message, answers: dict[str, str]
) -> QuestionnaireAnswers:
    """Insert the completed questionnaire (one round trip once the model is bound); if this
    update was handled before, the document it saved stays."""
    await bind(database)
    user = message.from_user
    document = QuestionnaireAnswers(
        id=f"{bot.id}:{message.chat.id}:{message.message_id}",
        bot_id=bot.id,
        user_id=user.id if user is not None else message.chat.id,
        chat_id=message.chat.id,
        answers=answers,
        completed_at=datetime.now(UTC),
    )
    with contextlib.suppress(DuplicateKeyError):
        await document.insert()
    return document


def _field(state: State) -> str:
    return (state.state or "").rsplit(":", 1)[-1]


def router() -> Router:
    """Build the questionnaire bot's router."""
    questionnaire = Router(name="questionnaire")

    @questionnaire.message(CommandStart())
    async def start(message: Message, state: FSMContext) -> None:
        current = await state.get_state()
        resumed = next((s for s in ORDER if s.state == current), None)
        if resumed is None:
            await state.set_data({})
            resumed = Questionnaire.q1
            await state.set_state(resumed)
        await message.answer(QUESTIONS[_field(resumed)])

    @questionnaire.message(StateFilter(Questionnaire), F.text)
    async def answer(
        message: Message,
        state: FSMContext,
        raw_state: str,
        bot: Bot,
        database: AsyncDatabase[Any],
    ) -> None:
        position = [s.state for s in ORDER].index(raw_state)
        field = _field(ORDER[position])
        if position + 1 < len(ORDER):
            await state.update_data({field: message.text})
            following = ORDER[position + 1]
            await state.set_state(following)
            await message.answer(QUESTIONS[_field(following)])
        else:
            answers = {**await state.get_data(), field: message.text or ""}
            await save_answers(database, bot, message, answers)
            await state.clear()
            await message.answer(THANKS)

    return questionnaire
