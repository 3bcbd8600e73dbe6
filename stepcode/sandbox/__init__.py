"""The sandbox: runs untrusted Python fast (one fork per program, no interpreter start-up) and contains what it does.

    from stepcode.sandbox.engine import Sandbox, preload_for

Modules, by the process they run in:
- `engine`: in the caller. `Sandbox`, a pool of fork-servers; the threat model is its docstring.
- `server`, `runners`, `isolation`, `protocol`, `_forkloop.c`: in each fork-server, an interpreter started with
  `python -S -m stepcode.sandbox.server`. **Import-light rule:** these import the standard library and each other,
  nothing else (no third-party module, no other stepcode package): every module a server imports enlarges each
  fork. `tests/test_layers.py` enforces it, so this file must stay empty of imports too.
"""
