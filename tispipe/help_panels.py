"""`--help` that reads at any width: a command's options listed by panel (`tispipe.configs.PANELS`), every
option's names whole, its help wrapped beside them and never cut.

typer's own table (typer.rich_utils) gives each part of an option a column: the name, the short name,
the `--no-` twin, the type and the help. The widest entry of each sets its column, so at 80 columns
`train --help` had about 20 characters left for the help, and rich cut the names with "…". Here an
option is two cells: its names (a flag's `--no-` twin after " / ", wrapping onto a line of its own)
with its type, and its help with its default or [required]. The names' column is as wide as the longest single name
of the command (or up to 32 characters where the width allows), so no name is ever cut, and the
help takes the rest of the width. Below about 30
characters for the help, each help goes under its names instead.

rich is imported only when the help is shown.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import typer.core

from tispipe.configs import PANELS

HELP_PANEL = "Config and help"  # --config and --help: what every command has, listed last
MIN_HELP_WIDTH = 30  # narrower than this, the help goes under the names
NAME_WIDTH = 32  # the names' column at most, but for a single name longer than that; longer lines of names wrap


class PanelledCommand(typer.core.TyperCommand):
    """A typer command whose `--help` lists its options by panel; `config`: the command's config dataclass
    (its fields without a default are marked [required]: the command line or --config must give them)."""

    config: type | None = None

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if not typer.core.HAS_RICH or self.rich_markup_mode is None:
            return super().format_help(ctx, formatter)
        print_help(self, ctx)


def print_help(command: PanelledCommand, ctx: Any) -> None:
    """Print `command`'s usage, its summary, then one panel of options per help panel, in PANELS order."""
    from rich.padding import Padding
    from typer import rich_utils

    console = rich_utils._get_rich_console()
    console.print(Padding(rich_utils.highlighter(command.get_usage(ctx)), 1), style=rich_utils.STYLE_USAGE_COMMAND)
    if command.help:
        console.print(Padding(rich_utils._get_help_text(obj=command, markup_mode=command.rich_markup_mode), (0, 1, 1, 1)))
    required = {f.name for f in dataclasses.fields(command.config) if f.default is dataclasses.MISSING} if command.config else set()
    panels: dict[str, list[tuple[Any, Any]]] = {}
    for param in command.get_params(ctx):
        if not getattr(param, "hidden", False):
            panel = getattr(param, "rich_help_panel", None) or HELP_PANEL
            panels.setdefault(panel, []).append((_names(param, ctx), _help(param, param.name in required)))
    order = [*PANELS, HELP_PANEL]
    rows = [row for panel_rows in panels.values() for row in panel_rows]
    inner = console.width - 4  # the panel's border and padding
    longest_word = max(len(word) for names, _ in rows for word in names.plain.split())
    longest_line = max(len(names.plain) for names, _ in rows)
    name_width = max(longest_word, min(longest_line, inner // 3, NAME_WIDTH))
    stacked = inner - name_width - 2 < MIN_HELP_WIDTH
    for title in sorted(panels, key=lambda t: order.index(t) if t in order else len(order)):
        console.print(_panel(title, panels[title], name_width, stacked))


def _names(param: Any, ctx: Any) -> Any:
    """The option's names and type, e.g. `--lr <float>`, `--resume / --no-resume`, `-h, --help`; an argument's metavar."""
    from rich.text import Text
    from typer import rich_utils

    if param.param_type_name == "argument":
        text = Text(getattr(param, "display_name_raw", None) or param.name, style=rich_utils.STYLE_OPTION)
    else:
        text = Text(", ".join(sorted(param.opts, key=lambda name: name.startswith("--"))), style=rich_utils.STYLE_OPTION)  # -h, --help
        if param.secondary_opts:
            text.append(" / ").append(", ".join(param.secondary_opts), style=rich_utils.STYLE_NEGATIVE_OPTION)
    if not getattr(param, "is_flag", False) and hasattr(param, "display_type_rich"):
        kind = param.display_type_rich(ctx)
        if kind:
            text.append(" ").append(kind, style=rich_utils.STYLE_TYPES)
    return text


def _help(param: Any, required: bool) -> Any:
    """The option's help, then its default ([default: on] for a flag that is on) or [required]."""
    from rich.text import Text
    from typer import rich_utils

    text = rich_utils.highlighter(Text(" ".join((getattr(param, "help", None) or "").split())))
    if required or param.required:
        return text.append(" [required]", style=rich_utils.STYLE_REQUIRED_LONG)
    default = param.default
    if default is None or not param.expose_value or getattr(param, "show_default", True) is False:
        return text
    if getattr(param, "is_flag", False):
        default = "on" if default else "off"
    elif isinstance(default, (list, tuple)):
        default = ", ".join(str(value) for value in default)
    return text.append(f" [default: {default}]", style=rich_utils.STYLE_OPTION_DEFAULT)


def _panel(title: str, rows: list[tuple[Any, Any]], name_width: int, stacked: bool) -> Any:
    """One panel: names beside their help (names `name_width` wide), or each help under its names."""
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from typer import rich_utils

    table = Table.grid(padding=(0, 2), expand=True)
    if stacked:
        table.add_column(overflow="fold")
        for names, help in rows:
            table.add_row(names)
            table.add_row(Padding(help, (0, 0, 0, 4)))
    else:
        table.add_column(width=name_width, overflow="fold")
        table.add_column(ratio=1, overflow="fold")
        for names, help in rows:
            table.add_row(names, help)
    return Panel(table, title=title, title_align="left", border_style=rich_utils.STYLE_OPTIONS_PANEL_BORDER)
