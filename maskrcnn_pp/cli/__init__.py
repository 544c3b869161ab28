"""The command-line tools, one module each; ``tools/*.py`` and the ``maskrcnn-pp-*`` console
commands (setup.py) both call their ``main(argv)``. Each imports torch, Detectron2 and the
library inside ``main``, after parsing its arguments, so that ``--help`` answers at once
(tests/tools/test_help_is_fast.py)."""
