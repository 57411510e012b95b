"""Software CPS card served through vsmartcard's vpcd into the real pcscd.

Library use (tests, demo)::

    with SimulatedCard(card_file, port=35963) as sim:   # inserted on enter
        ...                                            # talk to "Virtual PCD 00 00"
        sim.remove()                                   # pull it out
    proc = SimProcess.start(card_file, port=35963)     # same card, as `cps-card-sim`
    proc.stop()
"""

from pki.cards.sim.runner import SimProcess, SimulatedCard
from pki.cards.sim.softcard import SoftCard
from pki.cards.sim.store import CardFile, CardState

__all__ = ["CardFile", "CardState", "SimProcess", "SimulatedCard", "SoftCard"]
