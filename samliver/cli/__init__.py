"""The ``samliver`` command."""
