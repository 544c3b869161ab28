"""The command-line tools, one module each; ``tools/*.py`` and the ``maskrcnn-pp-*`` console
commands (setup.py) both call their ``main(argv)``."""
