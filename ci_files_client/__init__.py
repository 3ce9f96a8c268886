"""`ci-files`: the command-line client of the Code Interpreter Files service.

Not part of the function app (see .funcignore): it only talks HTTP to a running service.
"""

__version__ = "1.0.0"
