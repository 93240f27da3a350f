"""The ``qlite`` console script. ``qlite put`` takes a light path (argparse, standard library,
boto3); every other command loads the typer CLI."""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["put"]:
        from qlite.cli.put import main as put_main

        sys.exit(put_main(argv[1:]))
    from qlite.cli.main import app

    app(prog_name="qlite")


if __name__ == "__main__":
    main()
