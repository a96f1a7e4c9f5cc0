"""What a reload changes: which bots start, stop or restart, and which shared sections changed."""

from __future__ import annotations

from dataclasses import dataclass

from botyard.registry.models import BotConfig, Registry

__all__ = ["RegistryDiff", "diff_registries"]


@dataclass(frozen=True)
class RegistryDiff:
    """What a reload changes, by bot name, over the *enabled* bots.

    A bot that gets disabled counts as removed, one that gets enabled as added.
    ``changed`` bots differ in an effective setting (a change to ``defaults``
    counts for every bot that inherits it; a change to ``webhook`` for every
    bot in webhook mode). ``sections`` names the shared sections that changed
    (storage, cleanup, webhook, ops, cluster), for the caller to decide what they need.
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    sections: tuple[str, ...]

    @property
    def bots_affected(self) -> bool:
        """Whether any bot has to start, stop or restart."""
        return bool(self.added or self.removed or self.changed)


def diff_registries(old: Registry, new: Registry) -> RegistryDiff:
    """Compare two loads of a registry, for hot reload."""
    before = {bot.name: bot for bot in old.enabled_bots}
    after = {bot.name: bot for bot in new.enabled_bots}
    changed, unchanged = [], []
    for name in (name for name in after if name in before):
        if _effective(before[name], old) != _effective(after[name], new):
            changed.append(name)
        else:
            unchanged.append(name)
    sections = tuple(
        section
        for section in ("storage", "cleanup", "webhook", "ops", "cluster", "metrics")
        if getattr(old, section) != getattr(new, section)
    )
    return RegistryDiff(
        added=tuple(name for name in after if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(changed),
        unchanged=tuple(unchanged),
        sections=sections,
    )


def _effective(bot: BotConfig, registry: Registry) -> tuple[BotConfig, object]:
    return bot, registry.webhook if bot.mode == "webhook" else None
