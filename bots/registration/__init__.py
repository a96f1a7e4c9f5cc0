"""Registration bot: asks for a name and records it in the FSM data."""

from aiogram import F, Router
from aiogram.filters import CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import Message


class Registration(StatesGroup):
    waiting_for_name = State()


def router() -> Router:
    """Build the registration bot's router."""
    registration = Router(name="registration")

    @registration.message(CommandStart())
    async def start(message: Message, state: FSMContext) -> None:
        await state.set_state(Registration.waiting_for_name)
        await message.answer("Please enter your name.")

    @registration.message(Registration.waiting_for_name, F.text)
    async def record_name(message: Message, state: FSMContext) -> None:
        name = message.text or ""
        await state.update_data(name=name)
        await state.set_state(None)
        await message.answer(f"Your name, {name}, was recorded and state is stored in MongoDB.")

    return registration
