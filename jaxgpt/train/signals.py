"""SIGTERM and SIGINT while training: a clean stop with a checkpoint at the next step, agreed by every host."""

from __future__ import annotations

import signal
import sys
import threading

from tqdm import tqdm

from jaxgpt.distributed import any_process, is_lead


class StopSignal:
    """SIGTERM/SIGINT ask for a clean stop with a checkpoint; a second SIGINT aborts at once. `restore()` puts the
    previous handlers back (the command's, which make SIGTERM clean up and exit)."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if is_lead():
            name = signal.Signals(signum).name
            tqdm.write(f"{name} received: saving a checkpoint and stopping after this step", file=sys.stderr)

    def agreed(self) -> bool:
        """Every host stops at the same step, whichever of them saw the signal."""
        return any_process(self.requested)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
