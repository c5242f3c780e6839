"""`netmonctl completion bash|zsh|fish`: the shell code that completes netmonctl.

Click generates it (the `_NETMONCTL_COMPLETE` protocol): the shell calls
netmonctl back with that variable set to list commands, options and choices,
so the completion follows the installed version.
"""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the code that makes SHELL complete netmonctl's commands and options.

    \b
    bash (4.4+), e.g. in ~/.bashrc:
      eval "$(netmonctl completion bash)"
    zsh, e.g. in ~/.zshrc:
      eval "$(netmonctl completion zsh)"
    fish:
      netmonctl completion fish > ~/.config/fish/completions/netmonctl.fish

    netmonctl must be on PATH when the shell completes.
    """
    from click.shell_completion import get_completion_class

    from ..cli import cli

    completer = get_completion_class(shell)
    assert completer is not None  # every SHELLS entry is one of click's
    click.echo(completer(cli, {}, "netmonctl", "_NETMONCTL_COMPLETE").source())
