"""`x-prefix` in Python: a message goes to every binding whose key is a prefix of its
routing key ("" matches everything). Build with plugins/build-languages.sh."""

from wit_world import exports


class Exchange(exports.Exchange):
    """The exported interface; its one resource, Router, lives in exchange.py."""
