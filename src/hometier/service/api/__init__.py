"""The JSON API, one module per resource; ``routes(prefix)`` lists every handler."""
