"""``python -m prefenv.app.sweep_worker PAYLOAD RESULT``: one sweep cell in its own process.

:class:`prefenv.app.sweep.LocalBackend` starts one per cell; the cell's summary goes to RESULT and
the exit status says whether it finished.
"""

import sys

from prefenv.app.sweep import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
