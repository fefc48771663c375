"""``python -m stalwart`` is the ``stalwart`` command."""

from stalwart.cli._main import console_main

if __name__ == "__main__":
    console_main()
