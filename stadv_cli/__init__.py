"""The ``stadv`` command line: the application layer above :mod:`stadv` and :mod:`defenses`.

:func:`stadv_cli.main.main` parses and dispatches; each command group has its module
(:mod:`stadv_cli.attack`, :mod:`stadv_cli.train`, :mod:`stadv_cli.defense`,
:mod:`stadv_cli.denoiser`), and every handler calls library functions only.
"""
