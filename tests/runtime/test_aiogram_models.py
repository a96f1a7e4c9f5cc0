"""aiogram's models built on first use (botyard.runtime.aiogram_models), as aiogram builds them.

Each case runs in a fresh interpreter: the deferral acts on the import of aiogram, which
this test process has long done.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

DEFER = "from botyard.runtime.aiogram_models import defer_aiogram_model_builds"

#: An update reaching deep into the reference cycle (a reply, entities, a keyboard).
UPDATE = {
    "update_id": 7,
    "message": {
        "message_id": 2,
        "date": 1700000000,
        "chat": {"id": 5, "type": "private", "first_name": "Ann"},
        "from": {"id": 5, "is_bot": False, "first_name": "Ann", "language_code": "en"},
        "text": "/start now",
        "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
        "reply_to_message": {
            "message_id": 1,
            "date": 1700000000,
            "chat": {"id": 5, "type": "private"},
            "text": "pick one",
            "reply_markup": {"inline_keyboard": [[{"text": "a", "callback_data": "a"}]]},
        },
    },
}


def _run(*parts: str) -> str:
    """Run the parts (each dedented) as one program; its standard output."""
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(textwrap.dedent(part) for part in parts)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


SCHEMAS = """
    import json, re
    from pydantic import BaseModel
    import aiogram.methods as methods
    import aiogram.types as types
    from aiogram.methods import SendMessage
    from aiogram.types import Update

    def shown(value):
        return re.sub(" at 0x[0-9a-f]+", "", repr(value))  # addresses differ per process

    out = {}
    for package in (types, methods):
        for name in package.__all__:
            model = getattr(package, name)
            if isinstance(model, type) and issubclass(model, BaseModel):
                model.model_rebuild()  # deferred: builds it in its own right; eager: built
                out[f"{package.__name__}.{name}"] = {
                    field: [shown(info.annotation), shown(info.default), info.alias]
                    for field, info in model.model_fields.items()
                }
    # The cycle generated inside one schema, as a model first used through another is.
    out["<Update schema>"] = Update.model_json_schema()
    out["<SendMessage schema>"] = SendMessage.model_json_schema()
    out["<update>"] = Update.model_validate(UPDATE).model_dump(mode="json", exclude_unset=True)
    print(json.dumps(out, sort_keys=True))
"""


def test_every_model_has_the_fields_and_schema_of_an_eager_import() -> None:
    update = f"UPDATE = {UPDATE!r}"
    eager = json.loads(_run(update, SCHEMAS))
    deferred = json.loads(_run(DEFER, "defer_aiogram_model_builds()", update, SCHEMAS))
    assert sum(name.startswith("aiogram.types.") for name in eager) > 400
    assert sum(name.startswith("aiogram.methods.") for name in eager) > 150
    assert deferred.keys() == eager.keys()
    different = [name for name in eager if deferred[name] != eager[name]]
    assert different == []
    assert (
        deferred["<update>"]["message"]["reply_to_message"]["reply_markup"]
        == (
            UPDATE["message"]["reply_to_message"]["reply_markup"]  # type: ignore[index]
        )
    )


def test_the_import_builds_none_and_first_use_builds_what_is_used() -> None:
    report = json.loads(
        _run(
            DEFER,
            f"UPDATE = {UPDATE!r}",
            """
            defer_aiogram_model_builds()
            import json
            from pydantic import BaseModel
            import aiogram.methods as methods
            import aiogram.types as types
            from aiogram.methods import Response, SendMessage
            from aiogram.types import Message, Update

            def complete(package=types):
                return sorted(n for n in package.__all__
                              if getattr(getattr(package, n), "__pydantic_complete__", False))

            before = complete()
            methods_before = complete(methods)
            SendMessage(chat_id=1, text="hi", reply_markup={"inline_keyboard": []})
            # First used inside models that are not aiogram's types, as botyard and bots do:
            # their names resolve in the types' own modules.
            answer = Response[list[Update]].model_validate({"ok": True, "result": [UPDATE]})
            def saved():
                class Saved(BaseModel):
                    message: Message
                return Saved(message=UPDATE["message"])

            class NotedMessage(Message):  # a subclass, in a module that imports none of its names
                noted: bool = True
            print(json.dumps({
                "before": before,
                "after": complete(),
                "methods_before": methods_before,
                "methods_after": complete(methods),
                "chat": type(answer.result[0].message.chat).__name__,
                "saved": saved().message.reply_to_message.text,
                "subclass": NotedMessage.model_validate(UPDATE["message"]).reply_to_message.text,
            }))
            """,
        )
    )
    assert len(report["before"]) <= 5, report["before"]  # the few aiogram completes itself
    assert report["after"] == report["before"]  # generated inside the outer schemas only
    assert set(report["methods_before"]) <= {"Request", "Response", "TelegramMethod"}
    assert set(report["methods_after"]) - set(report["methods_before"]) == {"SendMessage"}
    assert report["chat"] == "Chat"
    assert report["saved"] == "pick one"
    assert report["subclass"] == "pick one"


def test_a_caller_name_does_not_shadow_a_type_built_on_first_use() -> None:
    """pydantic resolves a model built on first use in the caller's locals too: a local
    named like an aiogram type must not become that type's field."""
    output = _run(
        DEFER,
        f"""
        defer_aiogram_model_builds()
        from aiogram.types import Message
        def handler():
            Chat = int  # noqa: N806
            return Message.model_validate({UPDATE["message"]!r})
        print(type(handler().chat).__name__)
        """,
    )
    assert output.strip() == "Chat"


def test_an_earlier_import_is_left_as_it_is() -> None:
    output = _run(
        "import aiogram.types",
        DEFER,
        """
        defer_aiogram_model_builds()
        import sys
        from aiogram.types import Update
        print(Update.__pydantic_complete__, any(
            type(f).__name__ == "_ModelsFinder" for f in sys.meta_path))
        """,
    )
    assert output.split() == ["True", "False"]


def test_a_pydantic_without_the_internals_used_gets_aiogram_s_own_rebuilds() -> None:
    """Should pydantic's ``rebuild_model_fields`` change, the types are built as aiogram
    builds them: slower, never unbuildable."""
    output = _run(
        DEFER,
        f"UPDATE = {UPDATE!r}",
        """
        import pydantic.main  # pydantic's own modules keep the function they imported
        import pydantic._internal._fields as fields

        def changed(*args, **kwargs):
            raise TypeError("rebuild_model_fields() got an unexpected keyword argument")

        fields.rebuild_model_fields = changed
        defer_aiogram_model_builds()
        import aiogram.types as types
        from aiogram.types import Update

        built = [getattr(types, n).__pydantic_complete__ for n in types.__all__
                 if hasattr(getattr(types, n), "__pydantic_complete__")]
        print(all(built), len(built), Update.model_validate(UPDATE).message.chat.id)
        """,
    )
    complete, count, chat = output.split()
    assert complete == "True"
    assert int(count) > 400
    assert chat == "5"
