"""The call tests' aiortc client: bench/call_client.py's (a synthetic camera and microphone,
the page's pings, a record of what comes back; `rates` of a window of it), one copy for the
tests and `duplex bench soak`.

Run as a script it calls, prints "in call" once media flows, and then keeps the call up until
it is killed: the vanishing-client test SIGKILLs it, so that nothing says goodbye.
"""
from __future__ import annotations

import asyncio
import sys

from bench.call_client import (MIC_FRAME, MIC_RATE, CallClient, Received, SyntheticCamera,
                               SyntheticMicrophone, rates)

__all__ = ["MIC_FRAME", "MIC_RATE", "CallClient", "Received", "SyntheticCamera", "SyntheticMicrophone",
           "rates"]


async def _main(base_url: str) -> None:
    client = CallClient(base_url)
    await client.call()
    await client.wait_media()
    print("in call", client.session, flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1]))
