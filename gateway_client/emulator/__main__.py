"""``python -m gateway_client.emulator``: run the LLM Gateway emulator (see ``--help``)."""

from gateway_client.emulator.cli import main

if __name__ == "__main__":
    main()
