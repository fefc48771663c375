"""The command line: a layer above the library (the library never imports it).

``stalwart.Pipeline`` is the library's ``Pipeline`` plus ``main()`` (``_app``);
``python my_pipeline.py ...``, ``stalwart ...`` and ``python -m stalwart ...`` share one
command line (``_main.run_cli``). Library errors become exit codes and a paragraph on stderr:

    0 success · 1 a step failed (or a replay was refused) · 2 usage error
    75 run locked by another process · 130 interrupted (SIGINT) · 143 terminated (SIGTERM)

Nothing is imported here, so that ``stalwart.Pipeline`` costs no argparse until ``main()``.
"""
