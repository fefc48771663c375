"""A pipeline file, as short as a user's: ``python chain.py N ROOT`` runs ``N`` steps.

The whole-process rows of ``make bench`` start this file. Python compiles the file it runs
(``__main__``) from source every time; what it imports comes byte-compiled. So the
pipeline lives in ``workloads.py`` (imported) and this file only starts it, as the lean
contract floor is started (``python -c "import contract_floor; ..."``): neither side pays
for compiling the benchmark's own helpers at every start.
"""

import sys

from workloads import RUN_ID, build_chain

build_chain(int(sys.argv[1]), sys.argv[2]).main(["--run-id", RUN_ID])
