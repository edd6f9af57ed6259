"""The ``hometier`` command: parses flags, builds objects, calls one function per verb.

Errors are ``hometier.errors.Error``s mapped to their exit code in one place
(``main``). Long work shows a rich progress bar on a terminal; ``--json`` prints one
JSON document for scripts and nothing else on stdout.
"""
