"""Questionnaire bot: three questions, each answer stored as it arrives.

A user who stops half-way and comes back (even after a restart of the
platform) is asked the question they had reached, with earlier answers kept.
"""

from aiogram import F, Router
from aiogram.filters import CommandStart, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import Message

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
    async def answer(message: Message, state: FSMContext, raw_state: str) -> None:
        position = [s.state for s in ORDER].index(raw_state)
        await state.update_data({_field(ORDER[position]): message.text})
        if position + 1 < len(ORDER):
            following = ORDER[position + 1]
            await state.set_state(following)
            await message.answer(QUESTIONS[_field(following)])
        else:
            await state.set_state(None)
            await message.answer(THANKS)

    return questionnaire
